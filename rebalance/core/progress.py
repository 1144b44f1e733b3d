"""How a run reports progress: rich live output for people, silence for tests and libraries."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter(Protocol):
    def step_started(self, step_id: str, step_name: str, reason: str, total_shards: int) -> None: ...

    def shard_finished(self) -> None: ...

    def step_finished(self, step_id: str, cached: bool, wall_s: float, rows_out: int) -> None: ...

    def close(self) -> None: ...


class SilentReporter:
    def step_started(self, step_id: str, step_name: str, reason: str, total_shards: int) -> None:
        pass

    def shard_finished(self) -> None:
        pass

    def step_finished(self, step_id: str, cached: bool, wall_s: float, rows_out: int) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter:
    """One line per finished step; a live progress bar over shards while a step runs."""

    def __init__(self, console: Console | None = None):
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )
        self._task: TaskID | None = None

    def step_started(self, step_id: str, step_name: str, reason: str, total_shards: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(f"{step_id} ({step_name}): {reason}", total=total_shards)

    def shard_finished(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def step_finished(self, step_id: str, cached: bool, wall_s: float, rows_out: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        status = "cached" if cached else f"ran in {wall_s:.1f}s"
        self._progress.console.print(f"  {step_id:<20} {status:<16} {rows_out:>9,} rows", highlight=False)

    def close(self) -> None:
        self._progress.stop()
