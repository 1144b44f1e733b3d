from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dask.distributed import Client

from rebalance import api
from rebalance.core.config import load_pipeline
from rebalance.core.executors import DaskExecutor
from rebalance.core.runner import RunResult, run_pipeline
from tests.helpers import REPO, TINY, install_plugin, tree_digest


@pytest.mark.slow
@pytest.mark.cluster
def test_dask_local_cluster_gives_the_same_output_as_local(tiny_run: RunResult, tmp_path: Path) -> None:
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
    assert tree_digest(tiny_run.output_dir) == tree_digest(tmp_path / "do")


def test_a_fully_cached_run_starts_no_cluster(tmp_path: Path) -> None:
    overrides = [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}"]
    api.run(TINY, overrides)
    executor = DaskExecutor(scheduler=None, n_workers=1, retries=0)
    result = run_pipeline(load_pipeline(TINY, [*overrides, "executor.kind=dask"]), executor=executor)
    assert result.executed == [] and executor._client is None


@pytest.mark.slow
@pytest.mark.cluster
def test_scheduler_address_runs_on_an_existing_cluster(tiny_run: RunResult, tmp_path: Path) -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        dirs = [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}"]
        result = api.run(TINY, dirs, scheduler=cluster.scheduler_address)
    assert result.manifest["executor"] == f"dask ({cluster.scheduler_address})"
    assert tiny_run.manifest["executor"] == "local"
    assert tree_digest(tmp_path / "o") == tree_digest(tiny_run.output_dir)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_cluster_of_separate_dask_processes_survives_a_killed_worker(tmp_path: Path) -> None:
    """A scheduler and two workers started with the `dask` CLI; one worker is killed mid-step."""

    dask = Path(sys.executable).parent / "dask"
    # The test steps are a plugin the workers find by its entry point: no --preload.
    site = install_plugin(tmp_path / "site", "rebalance-test-steps", {"gated": "tests.core.gated_step"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    scheduler_file = tmp_path / "scheduler.json"
    processes = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                scheduler_file,
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        "--scheduler-file",
                        scheduler_file,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                    ],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
            workers = set(client.run(os.getpid).values())
        gate = tmp_path / "gate"
        pipeline = tmp_path / "gated.yaml"
        pipeline.write_text(
            f"executor: {{kind: dask, shard_rows: 20, retries: 2}}\n"
            f"steps:\n"
            f"  d: {{step: ingest_image_folder, root: {REPO / 'data/fashion_mnist_lt/train'}, max_images_per_class: 10}}\n"
            f"  g: {{step: test_gated_copy, inputs: {{dataset: d}}, gate: '{gate}'}}\n"
            f"  s: {{step: class_stats, inputs: {{dataset: g}}}}\n"
        )
        import tests.core.gated_step  # noqa: F401  registers the step in this process too

        dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]

        outcome: dict = {}
        runner = threading.Thread(
            target=lambda: outcome.update(result=api.run(pipeline, dirs, scheduler=address))
        )
        runner.start()
        calls = Path(f"{gate}.calls")
        while (not calls.exists() or len(calls.read_text().split()) < 4) and time.monotonic() < deadline + 60:
            time.sleep(0.05)  # both workers now hold a waiting shard
        os.kill(next(iter(sorted(workers))), signal.SIGKILL)
        gate.touch()
        runner.join(timeout=180)
        result = outcome["result"]
        assert result.manifest["executor"] == f"dask ({address})"
        started = calls.read_text().split()
        assert len(set(started)) == 5 and len(started) > 5  # what the killed worker held ran again
        step = next(s for s in result.manifest["steps"] if s["id"] == "g")
        assert step["shards"]["total"] == 5
        local = [
            f"cache_dir={tmp_path / 'local-cache'}",
            f"output_dir={tmp_path / 'local-out'}",
            "executor.kind=local",
        ]
        api.run(pipeline, local)
        assert tree_digest(tmp_path / "out") == tree_digest(tmp_path / "local-out")
        assert json.loads((tmp_path / "out" / "manifest.json").read_text())["steps"][1]["cache"] == "miss"
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_step_can_set_its_own_shard_size_without_changing_its_output(
    tiny_run: RunResult, tmp_path: Path
) -> None:
    own = api.run(
        TINY,
        [
            f"cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'out'}",
            "executor.kind=local",
            "steps.verified.shard_rows=30",
        ],
    )
    before, after = (
        next(s for s in run.manifest["steps"] if s["id"] == "verified") for run in (tiny_run, own)
    )
    assert after["shards"]["total"] == -(-after["rows_in"] // 30) != before["shards"]["total"]
    assert tree_digest(tiny_run.output_dir) == tree_digest(tmp_path / "out")
