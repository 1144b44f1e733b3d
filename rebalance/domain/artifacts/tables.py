"""The table artifacts: class statistics, synonyms, caption corpora and counts, concept frequency,
epoch order."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.core.artifact import TableArtifact, read_parquet, write_parquet
from rebalance.core.markdown import markdown_table


class ClassStats(TableArtifact):
    """Per-class statistics (``table``) and dataset-level figures (``summary``)."""

    stem = "class_stats"
    markdown_without = ()


class Synonyms(TableArtifact):
    """Per class: ``category_id``, ``concept`` (class name) and its ``synonyms`` (list of phrases)."""

    stem = "synonyms"

    def mapping(self) -> dict[str, list[str]]:
        """Class name -> its synonyms, in the table's order (what the matchers take)."""
        return dict(zip(self.table["concept"].to_pylist(), self.table["synonyms"].to_pylist(), strict=True))


def shard_pieces(pieces: pa.Table, index: int, num_shards: int) -> pa.Table:
    """Shard ``index`` of ``num_shards`` of a list of pieces (a ``rows`` column): a contiguous run
    of whole pieces holding about an equal share of the rows."""
    rows = pieces["rows"].to_numpy()
    starts = np.cumsum(rows) - rows
    owner = (starts * num_shards) // max(int(rows.sum()), 1)
    return pieces.filter(pa.array(owner == index))


@dataclasses.dataclass(frozen=True)
class CaptionCorpus:
    """A caption corpus as independently countable pieces: ``pieces`` has ``file``, ``row_group``
    (−1: the whole file) and ``rows``; ``column`` names the caption column.

    Rows are captions, so the runner shards a corpus by caption count; a shard is a contiguous run
    of pieces (a piece is never split), which keeps memory bounded whatever the corpus size.
    """

    pieces: pa.Table
    column: str

    @property
    def num_rows(self) -> int:
        return int(pc.sum(self.pieces["rows"]).as_py() or 0)

    def write(self, directory: Path) -> None:
        write_parquet(self.pieces, directory / "pieces.parquet")
        (directory / "meta.json").write_text(json.dumps({"column": self.column}))

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(
            read_parquet(directory / "pieces.parquet"),
            json.loads((directory / "meta.json").read_text())["column"],
        )

    def shard(self, index: int, num_shards: int) -> Self:
        return dataclasses.replace(self, pieces=shard_pieces(self.pieces, index, num_shards))

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        return cls(pa.concat_tables([part.pieces for part in parts]), parts[0].column)


class ConceptCounts(TableArtifact):
    """Raw caption counts per class (``table``: ``category_id``, ``concept``, ``count``, and as
    JSON ``synonym_counts`` and ``form_counts``); ``summary["captions"]`` captions were counted.
    Shards of a corpus add up exactly."""

    stem = "concept_counts"
    by_key_columns = ("synonym_counts", "form_counts")

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        first = parts[0]
        totals = np.sum([part.table["count"].to_numpy() for part in parts], axis=0)
        table = first.table.set_column(
            first.table.schema.get_field_index("count"), "count", pa.array(totals, pa.int64())
        )
        for column in cls.by_key_columns:
            merged = [json.loads(value) for value in first.table[column].to_pylist()]
            for part in parts[1:]:
                for totals_by_key, extra in zip(merged, part.table[column].to_pylist(), strict=True):
                    for key, count in json.loads(extra).items():
                        totals_by_key[key] += count
            table = table.set_column(
                table.schema.get_field_index(column), column, pa.array([json.dumps(c) for c in merged])
            )
        return cls(table, {**first.summary, "captions": sum(part.summary["captions"] for part in parts)})


@dataclasses.dataclass(frozen=True)
class ConceptFrequency(TableArtifact):
    """Caption counts per class (``table``), corpus figures (``summary``) and a rank plot (PNG)."""

    plot: bytes = b""
    stem = "concept_frequency"
    markdown_without = ("synonym_counts", "form_counts")

    def write(self, directory: Path) -> None:
        super().write(directory)
        (directory / "concept_frequency.png").write_bytes(self.plot)

    @classmethod
    def read(cls, directory: Path) -> Self:
        return dataclasses.replace(
            super().read(directory), plot=(directory / "concept_frequency.png").read_bytes()
        )


class EpochIndex(TableArtifact):
    """Image ids in training order, one row per draw: ``epoch``, ``position``, ``image_id``."""

    stem = "epoch_index"


@dataclasses.dataclass(frozen=True)
class EntityStatistics:
    """ADR's entity statistics of a captioned dataset, from its own captions: ``entities``
    (``entity``, ``phrases``, ``images``: how many images mention it), ``pairs`` (``first``,
    ``second``, ``images``: mentioned together) and ``mentions`` (``image_id``, ``entities``: what
    each image's captions mention), plus ``summary`` (captioned images, images read)."""

    entities: pa.Table
    pairs: pa.Table
    mentions: pa.Table
    summary: dict = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.mentions.num_rows

    def write(self, directory: Path) -> None:
        for name in ("entities", "pairs", "mentions"):
            write_parquet(getattr(self, name), directory / f"{name}.parquet")
        (directory / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True))
        (directory / "entities.md").write_text(markdown_table(self.entities.drop_columns(["phrases"])))

    @classmethod
    def read(cls, directory: Path) -> Self:
        tables = [read_parquet(directory / f"{name}.parquet") for name in ("entities", "pairs", "mentions")]
        return cls(*tables, json.loads((directory / "summary.json").read_text()))
