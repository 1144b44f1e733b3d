"""Caption retrieval's artifacts: a caption pool referenced in place, the sampled candidates per
class, and the rows chosen with their scores (REAL's retrieval by caption)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa

from rebalance.core.artifact import TableArtifact, read_parquet, write_parquet
from rebalance.core.markdown import markdown_table
from rebalance.domain.artifacts.tables import shard_pieces

OWN_TABLE = ""  # a piece's ``file`` when its captions are the pool's own table, not a file in place


@dataclasses.dataclass(frozen=True)
class CaptionPool:
    """A pool's captions as independently readable pieces, read in place.

    ``pieces``: ``file`` (a metadata parquet file, or ``OWN_TABLE``), ``row_group``, ``first_row``
    (the piece's first row within its file), ``rows`` and ``vectors`` (the ``.npy`` holding the
    file's image vectors row for row, or null). ``columns`` maps ``caption`` / ``key`` / ``url`` to
    the files' column names. ``encoder`` names the model that made the vectors. A pool given as
    an ingested dataset carries its captions as ``table`` (written beside the pieces); a pool of
    metadata files is never copied: only the list of pieces is.
    """

    pieces: pa.Table
    columns: dict[str, str | None]
    encoder: str | None = None
    table: pa.Table | None = None

    @property
    def num_rows(self) -> int:
        return int(np.sum(self.pieces["rows"].to_numpy()))

    @property
    def has_vectors(self) -> bool:
        return self.pieces.num_rows > 0 and self.pieces["vectors"].null_count == 0

    def write(self, directory: Path) -> None:
        write_parquet(self.pieces, directory / "pieces.parquet")
        if self.table is not None:
            write_parquet(self.table, directory / "captions.parquet")
        meta = {"columns": self.columns, "encoder": self.encoder}
        (directory / "meta.json").write_text(json.dumps(meta, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        own = directory / "captions.parquet"
        return cls(
            read_parquet(directory / "pieces.parquet"),
            meta["columns"],
            meta["encoder"],
            read_parquet(own) if own.exists() else None,
        )

    def shard(self, index: int, num_shards: int) -> Self:
        return dataclasses.replace(self, pieces=shard_pieces(self.pieces, index, num_shards))

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        return dataclasses.replace(parts[0], pieces=pa.concat_tables([part.pieces for part in parts]))


CANDIDATE_SCHEMA = pa.schema(
    [
        ("class_index", pa.int32()),
        ("sample_key", pa.uint64()),
        ("file", pa.dictionary(pa.int32(), pa.string())),  # one copy of each file's name
        ("row", pa.int64()),
        ("classes_named", pa.int32()),
    ]
)


def kth_smallest_keys(classes: np.ndarray, keys: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Per class, its ``k``-th smallest key, or the largest possible key when it has fewer than
    ``k`` rows; only the keys of classes with ``k`` rows or more are looked at."""
    counts = np.bincount(classes, minlength=num_classes)
    limit = np.full(num_classes, np.iinfo(np.uint64).max, dtype=np.uint64)
    full = np.flatnonzero(counts >= k)
    if len(full):
        crowded = np.flatnonzero((counts >= k)[classes])
        # Grouping by class is a linear radix sort on 16-bit labels (numpy's stable sort), and
        # each class's k-th key a linear selection: 5x faster than sorting (class, key) pairs.
        labels = classes[crowded]
        order = np.argsort(labels.astype(np.uint16) if num_classes <= 1 << 16 else labels, kind="stable")
        grouped = keys[crowded[order]]
        bounds = np.concatenate([[0], np.cumsum(counts[full])])
        for position, label in enumerate(full):
            limit[label] = np.partition(grouped[bounds[position] : bounds[position + 1]], k - 1)[k - 1]
    return limit


def bottom_k(table: pa.Table, k: int) -> pa.Table:
    """Per class, the ``k`` rows with the smallest ``sample_key``, in the order they came.

    A seeded uniform sample that merges exactly: the bottom k of a union is the bottom k of the
    parts' bottom k, so shards sample independently and agree with one pass over everything; and
    since rows keep their order (the pool's), so does the table. (Two rows of a class tying on
    the k-th 64-bit key both stay.)
    """
    if table.num_rows == 0:
        return table
    classes = table["class_index"].to_numpy()
    if np.bincount(classes).max() <= k:
        return table
    keys = table["sample_key"].to_numpy()
    limit = kth_smallest_keys(classes, keys, k, int(classes.max()) + 1)
    return filter_rows(table, keys <= limit[classes])


def filter_rows(table: pa.Table, keep: np.ndarray) -> pa.Table:
    """``table.filter(keep)``, but a chunk that keeps every row is passed on as it is: a sample's
    later batches rarely hold a row to drop."""
    parts, start = [], 0
    for batch in table.to_batches():
        mask = keep[start : start + batch.num_rows]
        start += batch.num_rows
        parts.append(batch if mask.all() else batch.filter(pa.array(mask)))
    return pa.Table.from_batches(parts, schema=table.schema)


def file_codes(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Each row's ``file`` as a number, and the file each number names."""
    files = table["file"].combine_chunks()
    if not pa.types.is_dictionary(files.type):
        files = files.dictionary_encode()
    return files.indices.to_numpy(zero_copy_only=False).astype(np.int64), files.dictionary.to_pylist()


class CaptionCandidates(TableArtifact):
    """Per class with a quota, a seeded sample of at most ``max_candidates`` pool captions that name
    it (``table``, ``CANDIDATE_SCHEMA``): where each caption lies, not its text, which
    ``rank_captions`` reads back for the sample alone. ``summary``: ``matched`` (per class, every caption that
    named it, sampled or not), ``quota``, ``max_candidates``, ``seed`` and ``captions`` read.
    Shards merge exactly (``bottom_k``)."""

    stem = "caption_candidates"

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        first = parts[0].summary
        table = bottom_k(pa.concat_tables([part.table for part in parts]), first["max_candidates"])
        matched = np.sum([part.summary["matched"] for part in parts], axis=0).tolist()
        captions = sum(part.summary["captions"] for part in parts)
        return cls(table, {**first, "matched": matched, "captions": captions})


@dataclasses.dataclass(frozen=True)
class CaptionRetrieval:
    """The pool rows chosen by caption (``chosen``: class, key, url, caption, matched form, T2T,
    T2I, rank), the per-class funnel (``per_class``: quota, matched, ranked, passed T2I, kept) and
    img2dataset's input for downloading just the chosen rows (``img2dataset.parquet``)."""

    chosen: pa.Table
    per_class: pa.Table
    summary: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return self.chosen.num_rows

    def download_list(self) -> pa.Table:
        """img2dataset's input: ``url``, ``caption``, and the columns to keep (pass them to
        ``--save_additional_columns``) so that the downloads join back by ``retrieval_key``."""
        return pa.table(
            {
                "url": self.chosen["url"],
                "caption": self.chosen["caption"],
                "label": self.chosen["concept"],
                "retrieval_key": self.chosen["key"],
                "t2t": self.chosen["t2t"],
                "t2i": self.chosen["t2i"],
            }
        )

    def write(self, directory: Path) -> None:
        write_parquet(self.chosen, directory / "chosen.parquet")
        write_parquet(self.per_class, directory / "per_class.parquet")
        write_parquet(self.download_list(), directory / "img2dataset.parquet")
        (directory / "per_class.md").write_text(markdown_table(self.per_class))
        (directory / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(
            read_parquet(directory / "chosen.parquet"),
            read_parquet(directory / "per_class.parquet"),
            json.loads((directory / "summary.json").read_text()),
        )
