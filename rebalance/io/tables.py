"""Read a small side table (CSV, JSON lines or parquet) that maps file names to values."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from rebalance.errors import DataError


def read_side_table(path: Path, required: tuple[str, ...]) -> pa.Table:
    """The table in ``path`` (by suffix: .csv, .jsonl/.json, .parquet), checked for ``required`` columns."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    # Keys such as "00042" are text: a CSV reader would otherwise make them the integer 42.
    as_text = pyarrow.csv.ConvertOptions(column_types={name: pa.string() for name in required})
    readers = {
        ".csv": lambda source: pyarrow.csv.read_csv(source, convert_options=as_text),
        ".jsonl": pyarrow.json.read_json,
        ".json": pyarrow.json.read_json,
        ".parquet": pyarrow.parquet.read_table,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown table format {path.suffix!r}; use one of {sorted(readers)}")
    try:
        table = reader(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: cannot read the table: {str(error).splitlines()[0]}") from None
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {table.column_names}")
    return table
