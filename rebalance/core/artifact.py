"""The artifact protocol, the parquet I/O every artifact shares, and the generic table artifact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.core.markdown import markdown_table


@runtime_checkable
class Artifact(Protocol):
    def write(self, directory: Path) -> None: ...

    @classmethod
    def read(cls, directory: Path) -> Self: ...

    @property
    def num_rows(self) -> int: ...


@runtime_checkable
class ShardableArtifact(Artifact, Protocol):
    def shard(self, index: int, num_shards: int) -> Self: ...

    @classmethod
    def concat(cls, parts: list[Self]) -> Self: ...


def write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed writer options so the same table always gives the same bytes.
    pq.write_table(table, path, compression="zstd", write_statistics=True, store_schema=True)


def read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path, memory_map=True)


@dataclasses.dataclass(frozen=True)
class TableArtifact:
    """One Arrow table as ``<stem>.parquet``, with an optional JSON ``summary`` (``summary.json``)
    and, when ``markdown_without`` is set, a markdown copy (``<stem>.md``) without those columns.

    Subclasses only name their ``stem`` (and their meaning): the runner tells artifact types apart
    by class when it checks a pipeline's wiring.
    """

    table: pa.Table
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    stem: ClassVar[str]
    markdown_without: ClassVar[tuple[str, ...] | None] = None

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def write(self, directory: Path) -> None:
        write_parquet(self.table, directory / f"{self.stem}.parquet")
        if self.summary:
            (directory / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True))
        if self.markdown_without is not None:
            (directory / f"{self.stem}.md").write_text(
                markdown_table(self.table.drop_columns(list(self.markdown_without)))
            )

    @classmethod
    def read(cls, directory: Path) -> Self:
        summary = directory / "summary.json"
        return cls(
            read_parquet(directory / f"{cls.stem}.parquet"),
            json.loads(summary.read_text()) if summary.exists() else {},
        )


def positions_of(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``wanted``, its position in ``ids`` (binary search, no dict); and the wanted ids
    that ``ids`` lacks (their positions are meaningless)."""
    order = np.argsort(ids, kind="stable")
    found = np.searchsorted(ids, wanted, sorter=order)
    rows = order[np.minimum(found, len(order) - 1)] if len(order) else found
    missing = wanted[(len(order) == 0) | (ids[rows] != wanted)] if len(wanted) else wanted
    return rows, missing
