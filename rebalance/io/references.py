"""Image references: where an image's bytes are, and the one way every step reads them.

A dataset row's ``file_name`` is either a file path (relative to the dataset's ``image_root``, or
absolute) or a member of a tar shard, written ``<shard>#<offset>+<size>:<member>``: the byte
offset and size of the member's data, recorded when the shard was scanned, so reading one image
is one seek and one read and a shard is never unpacked. URLs are kept as metadata only: nothing
is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_TAR_MEMBER = re.compile(r"^(?P<shard>.+\.tar)#(?P<offset>\d+)\+(?P<size>\d+):(?P<member>[^#]+)$")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image file (``offset`` None) or ``size`` bytes at ``offset`` in the tar shard ``path``."""

    path: Path
    offset: int | None = None
    size: int | None = None
    member: str | None = None

    @property
    def name(self) -> str:
        """A file name for the image (the member's, inside a shard)."""
        return Path(self.member).name if self.member is not None else self.path.name

    def read_bytes(self) -> bytes:
        if self.offset is None:
            return self.path.read_bytes()
        with open(self.path, "rb") as shard:
            shard.seek(self.offset)
            data = shard.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self}: the shard ends {self.size - len(data)} bytes early (truncated)")
        return data

    def identity(self) -> tuple[str, int | None]:
        """Equal for two references to the same bytes, however each was written."""
        return os.path.realpath(self.path), self.offset

    def text(self, relative_to: str | Path | None = None) -> str:
        """The reference as a ``file_name``, relative to ``relative_to`` when given."""
        path = self.path.resolve()
        shown = os.path.relpath(path, Path(relative_to).resolve()) if relative_to is not None else str(path)
        return shown if self.offset is None else tar_member(shown, self.offset, self.size, self.member)

    def __str__(self) -> str:
        return self.text()


def tar_member(shard: str, offset: int, size: int, member: str) -> str:
    """The ``file_name`` of a tar member: ``<shard>#<offset>+<size>:<member>``."""
    return f"{shard}#{offset}+{size}:{member}"


def is_tar_member(file_name: str) -> bool:
    """Whether ``file_name`` references a member of a tar shard rather than a file."""
    return _TAR_MEMBER.match(file_name) is not None


def image_ref(file_name: str, root: str | Path | None) -> ImageRef:
    """The reference a dataset's ``file_name`` makes, relative paths resolved against ``root``."""
    found = _TAR_MEMBER.match(file_name)
    shard = found["shard"] if found else file_name
    path = Path(shard)
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if found is None:
        return ImageRef(path)
    return ImageRef(path, int(found["offset"]), int(found["size"]), found["member"])


ImageSource = ImageRef | BinaryIO
"""A reference, or encoded image bytes already in memory (an image just generated)."""


@contextlib.contextmanager
def open_image(ref: ImageSource) -> Iterator:
    """The image as an open PIL image (decoded lazily, as ``Image.open`` does)."""
    from PIL import Image

    if not isinstance(ref, ImageRef):
        source = ref
    else:
        source = ref.path if ref.offset is None else io.BytesIO(ref.read_bytes())
    with Image.open(source) as image:
        yield image
