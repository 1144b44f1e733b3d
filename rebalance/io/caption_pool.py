"""A caption pool read in place: parquet metadata files (LAION's ``metadata/*.parquet`` with ``url``,
``caption``, ``key``, or any folder of parquet files with a caption column), each optionally beside
the ``.npy`` of its image vectors in the same row order (``img_emb/img_emb_<i>.npy``).

Nothing is copied: pieces name a file and a row group, captions are read one row group and one
column at a time, and vectors are memory-mapped and read only for the rows asked for.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.errors import DataError
from rebalance.io.embedding_folders import embedding_shards
from rebalance.io.memmaps import release_mapped_pages

T = TypeVar("T")
R = TypeVar("R")

PIECE_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("row_group", pa.int64()),
        ("first_row", pa.int64()),
        ("rows", pa.int64()),
        ("vectors", pa.string()),
    ]
)


def metadata_pieces(root: Path, columns: list[str], vectors: bool) -> pa.Table:
    """The pool under ``root`` as pieces (``PIECE_SCHEMA``), one per parquet row group; every file
    must have ``columns`` (the caption first).

    With ``vectors``, ``root`` is in the clip-retrieval layout (``img_emb/img_emb_<i>.npy`` beside
    ``metadata/metadata_<i>.parquet``) and each piece names its vector file; otherwise every
    ``*.parquet`` under ``root`` (or ``root`` itself) is a metadata file.
    """
    if vectors:
        pairs = [(metadata, str(npy)) for npy, metadata in embedding_shards(root, "img")]
    elif root.is_file():
        pairs = [(root, None)]
    else:
        files = sorted(root.rglob("*.parquet"), key=_natural)
        if not files:
            raise DataError(
                f"{root}: no .parquet metadata files here (expected e.g. metadata/metadata_0.parquet)"
            )
        pairs = [(file, None) for file in files]
    rows: dict[str, list] = {name: [] for name in PIECE_SCHEMA.names}
    for file, npy in pairs:
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{file}: not a readable parquet file ({str(error).splitlines()[0]})") from None
        missing = [name for name in columns if name not in parquet.schema_arrow.names]
        if missing:
            raise DataError(
                f"{file}: no column(s) {missing}; its columns are {parquet.schema_arrow.names} "
                "(set caption_column, key_column or url_column: null)"
            )
        if npy is not None:
            shape = np.load(npy, mmap_mode="r").shape
            if shape[0] != parquet.metadata.num_rows:
                raise DataError(
                    f"{npy} has {shape[0]:,} rows but {file} has {parquet.metadata.num_rows:,}; they must "
                    "be the same rows in the same order (re-export the shard)"
                )
        first = 0
        for group in range(parquet.metadata.num_row_groups):
            count = parquet.metadata.row_group(group).num_rows
            for name, value in zip(PIECE_SCHEMA.names, (str(file), group, first, count, npy), strict=True):
                rows[name].append(value)
            first += count
    return pa.table(rows, schema=PIECE_SCHEMA)


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def iter_piece_captions(file: str, row_groups: list[int], column: str, batch_rows: int) -> Iterator[pa.Array]:
    """The captions of consecutive row groups of ``file``, in batches of ``batch_rows``; a null
    caption reads as empty text."""
    try:
        batches = pq.ParquetFile(file).iter_batches(
            batch_size=batch_rows, row_groups=row_groups, columns=[column]
        )
        for batch in batches:
            values = batch.column(0)
            if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
                raise DataError(f"{file}: column {column!r} holds {values.type}, not text")
            yield values.fill_null("") if values.null_count else values
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{file}: cannot read captions ({type(error).__name__}: {error})") from None


def read_rows(file: str, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of the given rows (positions within ``file``), in that order; only the row
    groups that hold them are read."""
    parquet = pq.ParquetFile(file)
    missing = [name for name in columns if name not in parquet.schema_arrow.names]
    if missing:
        raise DataError(f"{file}: no column(s) {missing}; columns are {parquet.schema_arrow.names}")
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    groups = np.searchsorted(starts, rows, side="right") - 1
    wanted = np.unique(groups)
    table = parquet.read_row_groups(wanted.tolist(), columns=columns)
    offsets = np.cumsum([0, *(sizes[g] for g in wanted)])[:-1]
    local = offsets[np.searchsorted(wanted, groups)] + rows - starts[groups]
    return table.take(pa.array(local, pa.int64()))


def read_vectors(npy: str, rows: np.ndarray) -> np.ndarray:
    """Float32 copies of the given rows of a memory-mapped ``.npy``; NaN rows are an error."""
    vectors = np.load(npy, mmap_mode="r")
    order = np.argsort(rows, kind="stable")  # ascending reads: the page cache reads ahead
    block = np.empty((len(rows), vectors.shape[1]), np.float32)
    block[order] = vectors[rows[order]]
    release_mapped_pages(vectors)
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        raise DataError(
            f"{npy}: {int(bad.sum())} row(s) are NaN or infinite (first rows: {rows[bad][:5].tolist()}); "
            "re-export the embeddings"
        )
    return block


def read_units(pieces: list[dict], rows: int) -> list[list[dict]]:
    """``pieces`` in order, grouped into runs of consecutive row groups of one file holding at most
    ``rows`` rows (or one piece, when it alone holds more): each run is read and matched as one
    batch, so that small row groups do not each pay a batch's fixed costs."""
    units: list[list[dict]] = []
    for piece in pieces:
        last = units[-1][-1] if units else None
        if (
            last is not None
            and last["file"] == piece["file"]
            and last["first_row"] + last["rows"] == piece["first_row"]
            and sum(held["rows"] for held in units[-1]) + piece["rows"] <= rows
        ):
            units[-1].append(piece)
        else:
            units.append([piece])
    return units


def read_ahead(items: Iterable[T], read: Callable[[T], R], depth: int = 2) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` in order, with up to ``depth`` reads running ahead in threads.

    Parquet decodes a row group's column on one thread and releases the GIL, as the matcher does:
    reading the next row groups while this one is matched keeps every core busy.
    """
    with ThreadPoolExecutor(max_workers=depth) as threads:
        pending: deque = deque()
        for item in items:
            pending.append((item, threads.submit(read, item)))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
