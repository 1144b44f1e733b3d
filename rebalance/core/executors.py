"""Executors run the shards of sharded steps. Only this module creates a dask client."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from rebalance.core.config import ExecutorConfig
from rebalance.core.device import visible_gpus

GPU = "GPU"
"""The dask resource a GPU worker declares (``dask worker ... --resources GPU=1``)."""


class Executor(Protocol):
    def map_unordered(
        self, fn: Callable[[Any], Any], items: Sequence[Any], resources: dict[str, float] | None = None
    ) -> Iterator[Any]:
        """Apply ``fn`` to every item, yielding results as they finish; with ``resources``, each
        call holds them on its worker (``{"GPU": 1}``: one shard per GPU at a time)."""
        ...

    def gpu_slots(self) -> int:
        """How many GPUs the shards can run on (0: none)."""
        ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class LocalExecutor:
    """Runs shards one after another in this process."""

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Sequence[Any], resources: dict[str, float] | None = None
    ) -> Iterator[Any]:
        for item in items:
            yield fn(item)

    def gpu_slots(self) -> int:
        return len(visible_gpus())

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

    def __init__(
        self, scheduler: str | None, n_workers: int | None, retries: int, gpu_workers: int | None = None
    ):
        self._scheduler = scheduler
        self._n_workers = n_workers
        self._gpu_workers = gpu_workers
        self._retries = retries
        self._client: Any = None
        self._cluster: Any = None

    def gpu_ids(self) -> list[str]:
        """The GPUs a LocalCluster gives a worker each: the visible ones, or the first
        ``gpu_workers`` ids (on a machine without GPUs such workers run their GPU steps on the CPU,
        which is what tests of the resource model use)."""
        visible = visible_gpus()
        if self._gpu_workers is None:
            return visible
        return [*visible, *(str(i) for i in range(len(visible), self._gpu_workers))][: self._gpu_workers]

    def gpu_slots(self) -> int:
        if not self._scheduler:
            return len(self.gpu_ids())
        workers = self._ensure_client().scheduler_info(n_workers=-1)["workers"].values()
        return sum(1 for worker in workers if worker.get("resources", {}).get(GPU))

    def _ensure_client(self) -> Any:
        if self._client is None:
            from dask.distributed import Client

            if self._scheduler:
                self._client = Client(self._scheduler)
            else:
                self._cluster = self._local_cluster()
                self._client = Client(self._cluster)
        return self._client

    def _local_cluster(self) -> Any:
        """GPU workers pinned one to a GPU, as dask-cuda's LocalCUDACluster does, and CPU workers
        that see no GPU; one thread each (the libraries inside a shard use their own)."""
        import dask
        from dask.distributed import Nanny, Scheduler, SpecCluster

        gpus = self.gpu_ids()
        cpus = self._n_workers or max(1, (os.cpu_count() or 1) - len(gpus))
        quiet = {"nthreads": 1, "silence_logs": logging.ERROR}  # the runner reports progress
        workers = {
            f"cpu-{number}": {"cls": Nanny, "options": {**quiet, "env": {"CUDA_VISIBLE_DEVICES": ""}}}
            for number in range(cpus)
        }
        for gpu in gpus:
            workers[f"gpu-{gpu}"] = {
                "cls": Nanny,
                "options": {**quiet, "resources": {GPU: 1}, "env": {"CUDA_VISIBLE_DEVICES": gpu}},
            }
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}  # a free port
        # A nanny writes its workers' pre-spawn variables (OMP_NUM_THREADS=1, ...) into this
        # process's environment before spawning them. Left there, torch here would read them when it
        # first starts its thread pool, so a model trained in process (the probe, the CNN) would run
        # on one thread or on all of them depending on whether a cluster had started first, and its
        # floating-point sums (so its weights) would depend on which steps the cache skipped.
        before = {name: os.environ.get(name) for name in _pre_spawn_names()}
        try:
            # Non-daemonic workers may start processes: a step's DataLoader decodes in workers.
            with dask.config.set({"distributed.worker.daemon": False}):
                return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Sequence[Any], resources: dict[str, float] | None = None
    ) -> Iterator[Any]:
        from dask.distributed import as_completed

        client = self._ensure_client()
        futures = client.map(fn, items, retries=self._retries, pure=False, resources=resources)
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


def _pre_spawn_names() -> list[str]:
    import dask

    return [*dask.config.get("distributed.nanny.pre-spawn-environ", {}), "PYTHONHASHSEED"]


def make_executor(config: ExecutorConfig) -> Executor:
    if config.kind == "local":
        return LocalExecutor()
    return DaskExecutor(config.scheduler, config.n_workers, config.retries, config.gpu_workers)
