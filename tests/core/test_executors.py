from __future__ import annotations

from pathlib import Path

from rebalance import api
from rebalance.core.config import load_pipeline
from rebalance.core.executors import DaskExecutor
from rebalance.core.runner import run_pipeline
from tests.conftest import TINY, tree_digest


def test_dask_local_cluster_gives_the_same_output_as_local(tmp_path: Path) -> None:
    api.run(TINY, [f"cache_dir={tmp_path / 'lc'}", f"output_dir={tmp_path / 'lo'}"])
    distributed = api.run(
        TINY,
        [
            f"cache_dir={tmp_path / 'dc'}",
            f"output_dir={tmp_path / 'do'}",
            "executor.kind=dask",
            "executor.n_workers=2",
        ],
    )
    assert distributed.manifest["executor"] == "dask (LocalCluster)"
    verified = next(s for s in distributed.manifest["steps"] if s["id"] == "verified")
    assert verified["shards"]["total"] == 5
    assert tree_digest(tmp_path / "lo") == tree_digest(tmp_path / "do")


def test_a_fully_cached_run_starts_no_cluster(tmp_path: Path) -> None:
    overrides = [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}"]
    api.run(TINY, overrides)
    executor = DaskExecutor(scheduler=None, n_workers=1, retries=0)
    result = run_pipeline(load_pipeline(TINY, [*overrides, "executor.kind=dask"]), executor=executor)
    assert result.executed == [] and executor._client is None


def test_scheduler_address_runs_on_an_existing_cluster(tmp_path: Path) -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        dirs = [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}"]
        result = api.run(TINY, dirs, scheduler=cluster.scheduler_address)
    assert result.manifest["executor"] == f"dask ({cluster.scheduler_address})"
    local = api.run(TINY, [f"cache_dir={tmp_path / 'lc'}", f"output_dir={tmp_path / 'lo'}"])
    assert local.manifest["executor"] == "local"
    assert tree_digest(tmp_path / "o") == tree_digest(tmp_path / "lo")
