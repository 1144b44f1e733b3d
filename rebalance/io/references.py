"""Image references: where an image's bytes are, and the one way every step reads them.

A dataset row's ``file_name`` is a file path (relative to the dataset's ``image_root``, or
absolute), a member of a tar shard, written ``<shard>#<offset>+<size>:<member>`` (the byte offset
and size of the member's data, recorded when the shard was scanned, so reading one image is one
seek and one read and a shard is never unpacked), or a cell of a parquet file holding image
bytes, written ``<file>#<row group>/<row>:<column>`` (a binary cell, or a Hugging Face ``Image``
struct's ``bytes``). URLs are kept as metadata only: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_TAR_MEMBER = re.compile(r"^(?P<shard>.+\.tar)#(?P<offset>\d+)\+(?P<size>\d+):(?P<member>[^#]+)$")
_PARQUET_CELL = re.compile(r"^(?P<file>.+\.parquet)#(?P<group>\d+)/(?P<row>\d+):(?P<column>[^#]+)$")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image file; ``size`` bytes at ``offset`` in the tar shard ``path``; or the ``cell``
    (row group, row, column) of the parquet file ``path``."""

    path: Path
    offset: int | None = None
    size: int | None = None
    member: str | None = None
    cell: tuple[int, int, str] | None = None

    @property
    def contained(self) -> bool:
        """Whether the bytes are inside a container (a tar shard, a parquet file), not a file of their own."""
        return self.member is not None or self.cell is not None

    @property
    def name(self) -> str:
        """A file name for the image (the member's inside a shard; file, row group and row for a cell)."""
        if self.cell is not None:
            return f"{self.path.stem}-{self.cell[0]}-{self.cell[1]}"
        return Path(self.member).name if self.member is not None else self.path.name

    def read_bytes(self) -> bytes:
        if self.cell is not None:
            return _cell_bytes(self)
        if self.offset is None:
            return self.path.read_bytes()
        with open(self.path, "rb") as shard:
            shard.seek(self.offset)
            data = shard.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self}: the shard ends {self.size - len(data)} bytes early (truncated)")
        return data

    def identity(self) -> tuple[str, int | tuple[int, int, str] | None]:
        """Equal for two references to the same bytes, however each was written."""
        return os.path.realpath(self.path), self.cell if self.cell is not None else self.offset

    def text(self, relative_to: str | Path | None = None) -> str:
        """The reference as a ``file_name``, relative to ``relative_to`` when given."""
        path = self.path.resolve()
        shown = os.path.relpath(path, Path(relative_to).resolve()) if relative_to is not None else str(path)
        if self.cell is not None:
            return parquet_cell(shown, *self.cell)
        return shown if self.offset is None else tar_member(shown, self.offset, self.size, self.member)

    def __str__(self) -> str:
        return self.text()


def tar_member(shard: str, offset: int, size: int, member: str) -> str:
    """The ``file_name`` of a tar member: ``<shard>#<offset>+<size>:<member>``."""
    return f"{shard}#{offset}+{size}:{member}"


def parquet_cell(file: str, row_group: int, row: int, column: str) -> str:
    """The ``file_name`` of an image held in a parquet cell: ``<file>#<row group>/<row>:<column>``."""
    return f"{file}#{row_group}/{row}:{column}"


def in_container(file_name: str) -> bool:
    """Whether ``file_name`` references bytes inside a container (a tar shard or a parquet file)
    rather than a file of its own."""
    return _TAR_MEMBER.match(file_name) is not None or _PARQUET_CELL.match(file_name) is not None


def image_ref(file_name: str, root: str | Path | None) -> ImageRef:
    """The reference a dataset's ``file_name`` makes, relative paths resolved against ``root``."""
    member, cell = _TAR_MEMBER.match(file_name), _PARQUET_CELL.match(file_name)
    path = Path(member["shard"] if member else cell["file"] if cell else file_name)
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if member is not None:
        return ImageRef(path, int(member["offset"]), int(member["size"]), member["member"])
    if cell is not None:
        return ImageRef(path, cell=(int(cell["group"]), int(cell["row"]), cell["column"]))
    return ImageRef(path)


def _cell_bytes(ref: ImageRef) -> bytes:
    row_group, row, column = ref.cell
    values = _row_group_column(os.path.realpath(ref.path), row_group, column)
    if row >= len(values):
        raise OSError(f"{ref}: row group {row_group} has {len(values)} rows")
    value = values[row].as_py()
    if isinstance(value, dict):  # a Hugging Face Image struct: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if not isinstance(value, bytes):
        raise OSError(f"{ref}: the cell holds no image bytes")
    return value


@functools.lru_cache(maxsize=2)
def _row_group_column(path: str, row_group: int, column: str):
    # Pixel readers walk a pool in order: one row group of one column is read once, then served
    # from here for every image in it (two kept: a consumer may alternate between two files).
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0)
    except (OSError, ValueError, KeyError) as error:
        raise OSError(f"{path}: cannot read column {column!r} of row group {row_group} ({error})") from None


ImageSource = ImageRef | BinaryIO
"""A reference, or encoded image bytes already in memory (an image just generated)."""


@contextlib.contextmanager
def open_image(ref: ImageSource) -> Iterator:
    """The image as an open PIL image (decoded lazily, as ``Image.open`` does)."""
    from PIL import Image

    if not isinstance(ref, ImageRef):
        source = ref
    else:
        source = io.BytesIO(ref.read_bytes()) if ref.contained else ref.path
    with Image.open(source) as image:
        yield image
