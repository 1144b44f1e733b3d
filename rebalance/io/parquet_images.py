"""Pools stored as parquet files with the image bytes in a column (Hugging Face ``datasets``
exports, LAION-style parquet with a binary column): one reference a row, from the files' metadata
and the caption column only; the image bytes are not read here."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.errors import DataError
from rebalance.io.references import parquet_cell

COLUMNS = ("file_name", "key", "caption")


def scan_parquet_images(
    root: Path, column: str, caption_column: str | None, key_column: str | None
) -> pa.Table:
    """One row per row of every ``*.parquet`` under ``root`` (``root`` may be one file), in path order:
    ``file_name`` (the cell reference, relative to ``root``'s folder), ``key`` and ``caption``."""
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"{root}: no .parquet files; expected parquet files with an image column {column!r}")
    base = root.parent if root.is_file() else root
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise DataError(f"{path}: not a readable parquet file ({str(error).splitlines()[0]})") from None
        names = parquet.schema_arrow.names
        for wanted in (column, caption_column, key_column):
            if wanted is not None and wanted not in names:
                raise DataError(f"{path}: no column {wanted!r}; found {names}")
        relative = path.relative_to(base).as_posix()
        side = [name for name in (key_column, caption_column) if name is not None]
        for group in range(parquet.num_row_groups):
            count = parquet.metadata.row_group(group).num_rows
            rows["file_name"] += [parquet_cell(relative, group, row, column) for row in range(count)]
            values = parquet.read_row_group(group, columns=side) if side else None
            rows["key"] += (
                values[key_column].cast(pa.string()).to_pylist()
                if key_column
                else [f"{relative}#{group}/{row}" for row in range(count)]
            )
            rows["caption"] += (
                values[caption_column].cast(pa.string()).to_pylist() if caption_column else [None] * count
            )
    return pa.table({name: pa.array(values, pa.string()) for name, values in rows.items()})
