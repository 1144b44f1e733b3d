from __future__ import annotations

import json
from pathlib import Path

import pytest

from rebalance.core.runner import RunResult
from tests.helpers import TINY, TINY_STEPS, invoke


def test_run_then_rerun_reports_nothing_to_do(tmp_path: Path) -> None:
    dirs = [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}"]
    first = invoke("run", str(TINY), *dirs)
    assert first.exit_code == 0, first.output
    assert f"{len(TINY_STEPS)} step(s) executed" in first.output
    second = invoke("run", str(TINY), *dirs)
    assert "nothing to do: every step was cached" in second.output
    plan = invoke("plan", str(TINY), *dirs, "steps.export.num_shards=3")
    assert plan.exit_code == 0 and "changed parameter: num_shards" in plan.output

    listing = invoke("cache", "ls", "--cache-dir", str(tmp_path / "c"))
    assert "verify_images" in listing.output and "complete" in listing.output
    cleared = invoke("cache", "clear", "--cache-dir", str(tmp_path / "c"), "--step", "export_hf")
    assert "removed 1 cache entry" in cleared.output
    assert "export (export_hf)" in invoke("plan", str(TINY), *dirs).output


def test_config_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  a: {step: ingest_imagefolder}\n")
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert "did you mean 'ingest_image_folder'" in result.output
    assert "Traceback" not in result.output


def test_validate_and_steps_listing() -> None:
    assert f"valid ({len(TINY_STEPS)} steps" in invoke("validate", str(TINY)).output
    listing = invoke("steps").output
    for name in ("ingest_image_folder", "ingest_coco", "verify_images", "class_stats", "export_hf"):
        assert name in listing
    assert "extensions: tuple[str, ...]" in listing and "on_error: 'drop' | 'fail' = 'drop'" in listing
    assert "retrieve (adds_rows, bypassed by dataset)" in " ".join(listing.split())


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--sampler", "repeat-factor"],
            "--sampler: unknown value 'repeat-factor' (did you mean 'repeat_factor'?",
        ),
        (["--loss", "ldam"], "--loss: unknown value 'ldam' (did you mean 'ldam_drw'?"),
        (["--epochs", "0"], "--epochs: Input should be greater than 0, got 0"),
        (["--device", "mps"], "--device: unknown value 'mps' (allowed: auto, cpu, cuda)"),
        (["--lr-schedule", "cosin"], "--lr-schedule: unknown value 'cosin' (did you mean 'cosine'?"),
    ],
)
def test_train_options_are_validated_before_anything_is_read(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    result = invoke("train", str(tmp_path / "nowhere"), *flags)
    assert result.exit_code == 2, result.output
    assert "problem in the options of rebalance train" in result.output and expected in result.output
    assert "Traceback" not in result.output


def test_train_on_an_exported_run(tiny_run: RunResult, tmp_path: Path) -> None:
    result = invoke(
        "train",
        str(tiny_run.output_dir),
        "--sampler",
        "repeat_factor",
        "--epochs",
        "5",
        "--metrics-json",
        str(tmp_path / "m.json"),
    )
    assert result.exit_code == 0, result.output
    assert (
        "embedding column features, loss ce, sampler repeat_factor" in result.output
    )  # the export's vectors
    metrics = json.loads((tmp_path / "m.json").read_text())
    # Buckets are the pipeline's, counted before rebalancing (tiny: ankle_boot has 10 images, the
    # other classes 17-20), not the rebalanced counts, where every class would look alike.
    report = json.loads((tiny_run.output_dir / "report" / "report.json").read_text())
    assert [row["bucket"] for row in metrics["per_class"]] == report["buckets"]
    assert report["buckets"] == ["rare"] + ["common"] * 9
    rare_line = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("rare"))
    assert "–" not in rare_line
    # Five epochs on the tiny export's 64 PCA axes: far above chance (0.1).
    assert metrics["top1"] >= 0.3
    common = [row["accuracy"] for row in metrics["per_class"][1:]]
    assert metrics["bucket_accuracy"]["common"] == pytest.approx(sum(common) / 9)
    missing = invoke("train", str(tmp_path))
    assert missing.exit_code == 3 and "no exported dataset here" in missing.output
