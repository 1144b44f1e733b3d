"""Stream a caption corpus in Arrow batches, whatever its format, with bounded memory.

Accepted: a parquet file, a JSON-lines file (``.jsonl``/``.json``), a text file with one caption per
line (``.txt``), a Hugging Face dataset saved with ``save_to_disk``, or a folder of any of these
files (read in sorted order). Only one batch of ``batch_rows`` captions is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from rebalance.errors import DataError

SUFFIXES = (".parquet", ".jsonl", ".json", ".txt")


def caption_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"{path}: no caption files ({', '.join(SUFFIXES)}) or saved dataset here")
    return files


def caption_pieces(path: Path) -> list[tuple[str, int, int]]:
    """The corpus as ``(file, row_group, rows)`` pieces that can be counted independently.

    A parquet file gives one piece per row group (rows from its metadata); a saved HF dataset,
    JSON-lines or text file is one piece (row_group −1), its rows counted without parsing (lines).
    """
    pieces = []
    for file in caption_files(path):
        try:
            if file.suffix == ".parquet":
                metadata = pq.ParquetFile(file).metadata
                pieces += [
                    (str(file), group, metadata.row_group(group).num_rows)
                    for group in range(metadata.num_row_groups)
                ]
            elif file.is_dir():
                import datasets

                saved = datasets.load_from_disk(str(file))
                splits = saved.values() if isinstance(saved, datasets.DatasetDict) else [saved]
                pieces.append((str(file), -1, sum(split.num_rows for split in splits)))
            else:
                pieces.append((str(file), -1, _line_count(file)))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
            raise DataError(f"{file}: cannot read captions ({type(error).__name__}: {error})") from None
    return pieces


def iter_piece(file: str, row_group: int, column: str, batch_rows: int = 1_000_000) -> Iterator[pa.Array]:
    """Yield the captions of one piece from ``caption_pieces``."""
    path = Path(file)
    try:
        if row_group < 0:
            yield from _read(path, column, batch_rows)
            return
        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise DataError(f"{path}: no column {column!r}; columns are {parquet.schema_arrow.names}")
        batches = parquet.iter_batches(batch_size=batch_rows, row_groups=[row_group], columns=[column])
        yield from _column(batches, column, path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
        raise DataError(f"{path}: cannot read captions ({type(error).__name__}: {error})") from None


def _line_count(file: Path) -> int:
    # Only a size estimate that balances shards: the counter reads the real captions.
    import numpy as np

    if file.stat().st_size == 0:
        return 0
    data = np.memmap(file, dtype=np.uint8, mode="r")
    return int(np.count_nonzero(data == ord("\n"))) + (data[-1] != ord("\n"))


def iter_captions(path: Path, column: str, batch_rows: int = 1_000_000) -> Iterator[pa.Array]:
    """Yield string arrays of at most ``batch_rows`` captions from ``path``."""
    for file in caption_files(path):
        try:
            yield from _read(file, column, batch_rows)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
            raise DataError(f"{file}: cannot read captions ({type(error).__name__}: {error})") from None


def _read(file: Path, column: str, batch_rows: int) -> Iterator[pa.Array]:
    if file.is_dir():
        import datasets

        saved = datasets.load_from_disk(str(file))
        splits = saved.values() if isinstance(saved, datasets.DatasetDict) else [saved]
        for split in splits:
            yield from _column(split.data.table.to_batches(batch_rows), column, file)
    elif file.suffix == ".parquet":
        parquet = pq.ParquetFile(file)
        if column not in parquet.schema_arrow.names:
            raise DataError(f"{file}: no column {column!r}; columns are {parquet.schema_arrow.names}")
        yield from _column(parquet.iter_batches(batch_size=batch_rows, columns=[column]), column, file)
    elif file.suffix in (".jsonl", ".json"):
        options = pa_json.ReadOptions(block_size=64 << 20)
        yield from _column(pa_json.open_json(file, read_options=options), column, file)
    else:
        # One caption per line: a CSV reader with a separator and quote that never occur.
        options = pa_csv.ReadOptions(column_names=[column], block_size=64 << 20)
        parse = pa_csv.ParseOptions(
            delimiter="\x1f", quote_char=False, escape_char=False, newlines_in_values=False
        )
        convert = pa_csv.ConvertOptions(column_types={column: pa.large_string()}, strings_can_be_null=False)
        yield from _column(
            pa_csv.open_csv(file, read_options=options, parse_options=parse, convert_options=convert),
            column,
            file,
        )


def _column(batches, column: str, file: Path) -> Iterator[pa.Array]:
    for batch in batches:
        if column not in batch.schema.names:
            raise DataError(f"{file}: no column {column!r}; columns are {batch.schema.names}")
        values = batch.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise DataError(f"{file}: column {column!r} holds {values.type}, not text")
        yield values
