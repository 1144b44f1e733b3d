"""Executors run the shards of sharded steps. Only this module creates a dask client."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from rebalance.core.config import ExecutorConfig


class Executor(Protocol):
    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every item, yielding results as they finish."""
        ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class LocalExecutor:
    """Runs shards one after another in this process."""

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "local"


class DaskExecutor:
    """Runs shards as dask tasks, on a LocalCluster or on the cluster at ``scheduler``.

    The client is created on first use, so a run whose sharded steps are all cached starts no
    cluster. Tasks are retried ``retries`` times (e.g. after a worker is killed); a shard task is
    idempotent because its output is written atomically under a content key.
    """

    def __init__(self, scheduler: str | None, n_workers: int | None, retries: int):
        self._scheduler = scheduler
        self._n_workers = n_workers
        self._retries = retries
        self._client: Any = None
        self._cluster: Any = None

    def _ensure_client(self) -> Any:
        if self._client is None:
            from dask.distributed import Client, LocalCluster

            if self._scheduler:
                self._client = Client(self._scheduler)
            else:
                self._cluster = LocalCluster(
                    n_workers=self._n_workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: never clash with a running dashboard
                    silence_logs=logging.ERROR,
                )
                self._client = Client(self._cluster)
        return self._client

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from dask.distributed import as_completed

        client = self._ensure_client()
        futures = client.map(fn, items, retries=self._retries, pure=False)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def describe(self) -> str:
        return f"dask ({self._scheduler or 'LocalCluster'})"


def make_executor(config: ExecutorConfig) -> Executor:
    if config.kind == "local":
        return LocalExecutor()
    return DaskExecutor(config.scheduler, config.n_workers, config.retries)
