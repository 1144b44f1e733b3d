"""The fault catalogue: each bad input or crash ends in one clear message, a non-zero exit, and a
cache that the next run can use (nothing finished is lost)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rebalance import api
from rebalance.core.cache import MARKER
from tests.helpers import REPO, invoke
from tests.steps.lvis_fixture import build_lvis

DEMO = REPO / "data" / "fashion_mnist_lt"


def write(tmp_path: Path, steps: str, executor: str = "{kind: local}") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"executor: {executor}\ncache_dir: {tmp_path / 'cache'}\noutput_dir: {tmp_path / 'out'}\nsteps:\n{steps}"
    )
    return path


def one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    # One line says what is wrong and where (a resume hint may follow it); no traceback.
    message = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert "Traceback" not in result.output and needles[0] in message, result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_malformed_json(tmp_path: Path) -> None:
    bad = tmp_path / "lvis.json"
    bad.write_text('{"images": [')
    (tmp_path / "images").mkdir()
    pipeline = write(
        tmp_path, f"  train: {{step: ingest_coco, annotations: {bad}, image_root: {tmp_path / 'images'}}}\n"
    )
    one_line_error(invoke("run", str(pipeline)), 3, str(bad))


def test_annotations_with_unknown_category_and_image_ids(tmp_path: Path) -> None:
    annotations, root = build_lvis(tmp_path)
    data = json.loads(annotations.read_text())
    data["annotations"].append(
        {"id": 999, "image_id": 1, "category_id": 4242, "bbox": [0, 0, 1, 1], "area": 1.0}
    )
    annotations.write_text(json.dumps(data))
    pipeline = write(
        tmp_path, f"  train: {{step: ingest_coco, annotations: {annotations}, image_root: {root}}}\n"
    )
    one_line_error(invoke("run", str(pipeline)), 3, str(annotations), "4242")
    data["annotations"][-1] |= {"category_id": 57, "image_id": 777}
    annotations.write_text(json.dumps(data))
    one_line_error(invoke("run", str(pipeline)), 3, str(annotations), "777")


def test_a_corrupt_image_fails_clearly_or_is_dropped_and_recorded(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in ("bag", "coat"):
        (root / name).mkdir(parents=True)
        for png in sorted((DEMO / "train" / name).glob("*.png"))[:3]:
            (root / name / png.name).write_bytes(png.read_bytes())
    (root / "coat" / "broken.png").write_bytes(b"\x89PNG not really")
    steps = f"  d: {{step: ingest_image_folder, root: {root}}}\n  v: {{step: verify_images, inputs: {{dataset: d}}, on_error: fail}}\n"
    one_line_error(invoke("run", str(write(tmp_path, steps))), 3, "broken.png", "on_error: drop")
    result = invoke("run", str(write(tmp_path, steps.replace("on_error: fail", "on_error: drop"))))
    assert result.exit_code == 0, result.output
    removed = pq.read_table(tmp_path / "out" / "v" / "removed.parquet").to_pylist()
    assert [(r["file_name"], r["step"]) for r in removed] == [("coat/broken.png", "verify_images")]


def test_an_empty_class_and_a_class_never_mentioned_in_captions(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name, count in (("bag", 4), ("coat", 2), ("zebra", 0)):
        (root / name).mkdir(parents=True)
        for png in sorted((DEMO / "train" / name).glob("*.png"))[:count] if count else []:
            (root / name / png.name).write_bytes(png.read_bytes())
    captions = tmp_path / "captions.txt"
    captions.write_text("a bag on a chair\na red coat\nanother bag\n")
    steps = (
        f"  d: {{step: ingest_image_folder, root: {root}}}\n"
        "  stats: {step: class_stats, inputs: {dataset: d}}\n"
        "  synonyms: {step: mine_synonyms, inputs: {dataset: d}, wordnet: null}\n"
        f"  frequency: {{step: concept_frequency, inputs: {{synonyms: synonyms}}, captions: {captions}}}\n"
        "  sampled: {step: repeat_factors, inputs: {dataset: d}, method: rfs}\n"
    )
    result = invoke("run", str(write(tmp_path, steps)))
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats" / "summary.json").read_text())
    assert stats["classes"] == 3 and "zebra" in json.dumps(stats)
    frequency = json.loads((tmp_path / "out" / "frequency" / "summary.json").read_text())
    assert frequency["classes_never_mentioned"] == ["zebra"] and frequency["tail"][0] == "zebra"


def test_a_missing_model_path(tmp_path: Path) -> None:
    steps = (
        f"  d: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_images_per_class: 1}}\n"
        f"  e: {{step: embed_images, inputs: {{dataset: d}}, encoder: transformers, model: {tmp_path / 'no-such-model'}, device: cpu}}\n"
    )
    pipeline = write(tmp_path, steps)
    one_line_error(
        invoke("run", str(pipeline)),
        1,
        "cannot load the transformers model",
        "no-such-model",
        "Pass a local path",
    )
    assert list((tmp_path / "cache" / "ingest_image_folder").glob(f"*/{MARKER}"))  # what finished is kept


def test_a_yaml_typo(tmp_path: Path) -> None:
    pipeline = write(
        tmp_path, f"  d: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_image_per_class: 1}}\n"
    )
    one_line_error(
        invoke("run", str(pipeline)),
        2,
        "1 problem in the pipeline config",
        "steps.d.max_image_per_class",
        "did you mean 'max_images_per_class'",
    )


def test_a_full_disk_during_a_write_keeps_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = (
        f"  d: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_images_per_class: 3}}\n"
        "  s: {step: class_stats, inputs: {dataset: d}}\n"
    )
    pipeline = write(tmp_path, steps)
    import rebalance.core.fs as fs

    real_fsync_tree = fs.fsync_tree

    def full_for_stats(folder: Path) -> None:
        if (folder / "class_stats.parquet").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        real_fsync_tree(folder)

    monkeypatch.setattr(fs, "fsync_tree", full_for_stats)
    one_line_error(
        invoke("run", str(pipeline)), 5, "step 's' (class_stats)", "No space left on device", "Free space"
    )
    stats_dir = tmp_path / "cache" / "class_stats"
    assert not list(stats_dir.glob("*/" + MARKER)) and not list(stats_dir.glob(".tmp-*"))
    monkeypatch.setattr(fs, "fsync_tree", real_fsync_tree)
    assert api.run(pipeline).executed == ["s"]  # the finished ingest step was kept


@pytest.mark.parametrize("kind", ["in-process", "sharded"])
def test_kill_9_in_the_middle_of_a_step(tmp_path: Path, kind: str) -> None:
    gate = tmp_path / "gate"
    step = "test_gated_stats" if kind == "in-process" else "test_gated_copy"
    pipeline = write(
        tmp_path,
        f"  d: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_images_per_class: 10}}\n"
        f"  g: {{step: {step}, inputs: {{dataset: d}}, gate: '{gate}'}}\n"
        "  s: {step: class_stats, inputs: {dataset: g}}\n",
        executor="{kind: local, shard_rows: 20}",
    )
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tests.core.gated_step; "
        "from rebalance import api; api.run(sys.argv[2])"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(REPO), str(pipeline)])
    started = Path(f"{gate}.started") if kind == "in-process" else Path(f"{gate}.calls")
    deadline = time.monotonic() + 120
    while not (started.exists() and started.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    gate.touch()
    import tests.core.gated_step  # noqa: F401  registers the steps in this process too

    resumed = api.run(pipeline)
    assert resumed.executed == ["g", "s"]  # the ingest step finished before the kill and is reused
    assert api.run(pipeline).executed == []


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A real tmpfs mounted under the test's folder (CI runs as root); yields its mount point and a
    function that resizes it. Without root there is no way to make one, so the test is skipped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()

    def resize(kilobytes: int, option: str = "remount,") -> None:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{option}size={kilobytes}k", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
        )

    resize(64, option="")
    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _used_kilobytes(folder: Path) -> int:
    return -(-sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) // 1024)


def test_a_full_real_filesystem_under_a_faiss_index_write_is_a_storage_error(
    tmp_path: Path, small_filesystem
) -> None:
    mount, resize = small_filesystem
    steps = (
        f"  pool: {{step: ingest_pool, root: {DEMO / 'pool'}}}\n"
        "  vectors: {step: embed_pixels_pca, inputs: {dataset: pool}}\n"
    )
    index = "  index: {step: build_index, inputs: {embeddings: vectors}}\n"
    # The pool and its vectors are made on the roomy disk, then moved onto a filesystem with room
    # for them and 128 KiB more: the index (2,000 × 64 float32 = 500 KiB) does not fit.
    api.run(write(tmp_path, steps))
    used = _used_kilobytes(tmp_path / "cache")
    resize(used + 512)
    shutil.copytree(tmp_path / "cache", mount / "cache")
    resize(used + 128 + 64)  # tmpfs counts whole pages and folders: 64 KiB of slack
    pipeline = write(tmp_path, steps + index)
    on_small = [f"cache_dir={mount / 'cache'}"]
    one_line_error(
        invoke("run", str(pipeline), *on_small),
        5,
        "step 'index' (build_index)",
        "No space left on device",
        "Free space",
    )
    index_entries = mount / "cache" / "build_index"
    assert not list(index_entries.glob("*/" + MARKER)) and not list(index_entries.glob(".tmp-*"))
    resize(used + 4096)
    assert api.run(pipeline, on_small).executed == ["index"]  # pool and vectors were kept


def test_a_full_real_filesystem_while_publishing_outputs_is_a_storage_error(
    tmp_path: Path, small_filesystem
) -> None:
    mount, _ = small_filesystem
    steps = (
        f"  pool: {{step: ingest_pool, root: {DEMO / 'pool'}}}\n"
        "  vectors: {step: embed_pixels_pca, inputs: {dataset: pool}}\n"  # 500 KiB to publish, in 64 KiB
    )
    pipeline = write(tmp_path, steps)
    one_line_error(
        invoke("run", str(pipeline), f"output_dir={mount / 'out'}"),
        5,
        "cannot publish the outputs",
        "No space left on device",
    )
    assert not list((mount / "out").glob(".tmp-*"))
