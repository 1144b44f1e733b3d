from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rebalance import api
from rebalance.core.cache import MARKER
from rebalance.core.config import load_pipeline
from rebalance.core.runner import RunResult, run_command
from rebalance.errors import DataError
from tests.helpers import REPO, TINY, TINY_STEPS, tree_digest


def test_second_run_executes_nothing(run_dirs: list[str], tmp_path: Path) -> None:
    first = api.run(TINY, run_dirs)
    assert first.executed == TINY_STEPS
    second = api.run(TINY, run_dirs)
    assert second.executed == []
    assert all(step["cache"] == "hit" for step in second.manifest["steps"])
    assert all(
        not p.cached
        for p in api.plan(TINY, [*run_dirs, "seed=1", "steps.export.title=x"])
        if p.step.id == "export"
    )


def test_changing_one_parameter_reruns_only_downstream(run_dirs: list[str]) -> None:
    api.run(TINY, run_dirs)
    changed = [*run_dirs, "steps.verified.on_error=fail"]
    reasons = {p.step.id: p.reason for p in api.plan(TINY, changed)}
    assert reasons == {
        "train": "cached",
        "test": "cached",
        "verified": "changed parameter: on_error",
        "stats": "upstream changed: verified",
        "synonyms": "cached",
        "frequency": "cached",
        "pool": "cached",
        "outside": "cached",
        "embedded": "upstream changed: verified",
        "test_embedded": "upstream changed: verified",
        "pool_embedded": "upstream changed: verified",
        "outside_embedded": "upstream changed: verified",
        "pool_index": "upstream changed: pool_embedded",
        "retrieved": "upstream changed: verified, embedded, pool_index, outside_embedded",
        "retrieved_embedded": "upstream changed: retrieved, embedded, pool_embedded",
        "synthesized": "upstream changed: retrieved, retrieved_embedded",
        "synthesized_embedded": "upstream changed: synthesized, embedded, pool_embedded",
        "deduped": "upstream changed: synthesized, synthesized_embedded",
        "thinned": "upstream changed: deduped",
        "sampled": "upstream changed: thinned",
        "epochs": "upstream changed: sampled",
        "baseline": "upstream changed: verified, embedded, test_embedded",
        "rebalanced": "upstream changed: sampled, synthesized_embedded, verified, test_embedded",
        "cnn_baseline": "upstream changed: verified",
        "cnn_rebalanced": "upstream changed: sampled, verified",
        "export": "upstream changed: sampled, synthesized_embedded, test_embedded",
        "report": "upstream changed: baseline, cnn_baseline, cnn_rebalanced, sampled, verified, rebalanced",
    }
    assert api.run(TINY, changed).executed == [
        s for s in TINY_STEPS[2:] if s not in ("synonyms", "frequency", "pool", "outside")
    ]


def test_changed_input_file_is_detected_by_content(tmp_path: Path, run_dirs: list[str]) -> None:
    root = tmp_path / "images"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    source = sorted((REPO / "data/fashion_mnist_lt/train/bag").glob("*.png"))
    for index, png in enumerate(source[:4]):
        (root / ("a" if index < 2 else "b") / png.name).write_bytes(png.read_bytes())
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"steps:\n  d: {{step: ingest_image_folder, root: {root}}}\n  s: {{step: class_stats, inputs: {{dataset: d}}}}\n"
    )
    api.run(pipeline, run_dirs)
    touched = next((root / "a").iterdir())
    os.utime(touched)  # a new mtime with the same bytes is not a change
    assert [p.reason for p in api.plan(pipeline, run_dirs)] == ["cached", "cached"]
    touched.write_bytes(source[-1].read_bytes())
    assert [p.reason for p in api.plan(pipeline, run_dirs)] == [
        "changed input file: root",
        "upstream changed: d",
    ]


def test_manifest_records_the_run(tiny_run: RunResult) -> None:
    manifest = tiny_run.manifest
    on_disk = json.loads((tiny_run.output_dir / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert len(manifest["config_hash"]) == 16
    assert {"python", "rebalance", "pyarrow", "datasets", "dask"} <= set(manifest["versions"])
    verified = next(s for s in manifest["steps"] if s["id"] == "verified")
    assert verified["rows_in"] == verified["rows_out"] == 187
    assert verified["shards"] == {
        "total": 5,
        "reused": 0,
        "workers": {"local": {"shards": 5, "model_loads": 0}},
    }  # 187 rows / shard_rows 40
    assert {"key", "cache", "wall_s", "components"} <= set(verified)
    assert manifest["outputs"] == {
        "stats": "stats",
        "epochs": "epochs",
        "export": "export",
        "report": "report",
    }


def test_same_config_and_seed_give_byte_identical_outputs(tiny_run: RunResult, tmp_path: Path) -> None:
    # A second cold run, from its own empty cache, beside the session's: both keep cache/ and out/
    # in one folder, which the manifests name.
    api.run(TINY, [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"])
    manifests = []
    for out in (tiny_run.output_dir, tmp_path / "out"):
        text = (out / "manifest.json").read_text().replace(str(out.parent), "<run>")
        manifests.append(_without_timings(json.loads(text)))
    one, two = tree_digest(tiny_run.output_dir), tree_digest(tmp_path / "out")
    assert one == two and any(name.endswith(".parquet") for name in one)
    assert manifests[0] == manifests[1]  # identical but for wall times


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "wall_s"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_a_run_killed_mid_step_resumes_without_redoing_finished_shards(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    pipeline = tmp_path / "gated.yaml"
    pipeline.write_text(
        f"executor: {{kind: local, shard_rows: 20}}\n"
        f"steps:\n"
        f"  d: {{step: ingest_image_folder, root: {REPO / 'data/fashion_mnist_lt/train'}, max_images_per_class: 10}}\n"
        f"  g: {{step: test_gated_copy, inputs: {{dataset: d}}, gate: '{gate}'}}\n"
        f"  s: {{step: class_stats, inputs: {{dataset: g}}}}\n"
    )
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tests.core.gated_step; "
        "from rebalance import api; api.run(sys.argv[2], sys.argv[3:])"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(REPO), str(pipeline), *dirs])
    # Finished shards only: a shard's marker is also briefly inside its .tmp- folder before the rename.
    shard_markers = lambda: list((tmp_path / "cache" / "test_gated_copy").glob("*.shards-5/[0-9]*/" + MARKER))  # noqa: E731
    deadline = time.monotonic() + 120
    while len(shard_markers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(shard_markers()) == 2, "the run never reached the gate"
    child.send_signal(signal.SIGKILL)
    child.wait()

    finished = [p for p in (tmp_path / "cache" / "test_gated_copy").iterdir() if (p / MARKER).exists()]
    assert finished == []  # killed mid-step: the step itself is not complete
    calls_before = (tmp_path / "gate.calls").read_text().split()
    gate.touch()
    import tests.core.gated_step  # noqa: F401  registers the step in this process too

    resumed = api.run(pipeline, dirs)
    calls_after = (tmp_path / "gate.calls").read_text().split()[len(calls_before) :]
    step = next(s for s in resumed.manifest["steps"] if s["id"] == "g")
    assert {k: step["shards"][k] for k in ("total", "reused")} == {"total": 5, "reused": 2}
    assert sum(worker["shards"] for worker in step["shards"]["workers"].values()) == 3
    assert sorted(calls_after) == sorted(set(calls_after)) and not set(calls_after) & {"0", "20"}

    clean = [f"cache_dir={tmp_path / 'clean-cache'}", f"output_dir={tmp_path / 'clean-out'}"]
    api.run(pipeline, clean)
    assert tree_digest(tmp_path / "out") == tree_digest(tmp_path / "clean-out")


def test_failed_step_keeps_finished_work_and_says_how_to_resume(tmp_path: Path, run_dirs: list[str]) -> None:
    broken = tmp_path / "data"
    (broken / "cat").mkdir(parents=True)
    (broken / "cat" / "bad.png").write_bytes(b"not a png")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"executor: {{kind: local}}\nsteps:\n  d: {{step: ingest_image_folder, root: {broken}}}\n"
        "  v: {step: verify_images, inputs: {dataset: d}, on_error: fail}\n"
    )
    with pytest.raises(DataError) as caught:
        api.run(pipeline, [*run_dirs, "seed=3"])
    assert "step 'v' (verify_images)" in str(caught.value) and "bad.png" in str(caught.value)
    # The hint repeats the overrides: without them the rerun would start over in ./cache.
    assert f"rerun `rebalance run {pipeline} {' '.join(run_dirs)} seed=3` to resume" in str(caught.value)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and [s["id"] for s in manifest["steps"]] == ["d"]
    assert [p.cached for p in api.plan(pipeline, [*run_dirs, "seed=3"])] == [True, False]


def test_the_resume_command_repeats_overrides_and_scheduler_quoted_for_a_shell(tmp_path: Path) -> None:
    overrides = [
        "steps.export.title=Two words",
        "executor.kind=dask",
        "executor.scheduler=tcp://10.0.0.1:8786",
    ]
    config = load_pipeline(TINY, overrides)
    assert run_command(config) == (
        f"rebalance run {TINY} 'steps.export.title=Two words' --scheduler tcp://10.0.0.1:8786"
    )
    assert run_command(load_pipeline(TINY)) == f"rebalance run {TINY}"
