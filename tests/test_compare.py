from __future__ import annotations

from pathlib import Path

from rebalance import api
from rebalance.compare import ablation_variants
from rebalance.core.config import load_pipeline
from tests.conftest import TINY
from tests.test_cli import invoke


def test_ablation_bypasses_each_stage_and_the_sampler() -> None:
    config = load_pipeline(TINY, ["steps.rebalanced.loss=balanced_softmax"])
    assert ablation_variants(config, "rebalanced") == {
        "-retrieved": [
            "steps.retrieved_embedded.inputs.dataset=verified",
            "steps.synthesized.inputs.dataset=verified",
        ],
        "-synthesized": [
            "steps.synthesized_embedded.inputs.dataset=retrieved",
            "steps.deduped.inputs.dataset=retrieved",
        ],
        "-deduped": ["steps.thinned.inputs.dataset=synthesized"],
        "-thinned": ["steps.sampled.inputs.dataset=deduped"],
        "-sampler": ["steps.rebalanced.sampler=uniform"],
        "-balanced_softmax": ["steps.rebalanced.loss=ce"],
    }


def test_compare_with_ablation_on_the_tiny_pipeline(run_dirs: list[str], tmp_path: Path) -> None:
    rows = api.compare(TINY, run_dirs, ablation=True)
    assert [row["variant"] for row in rows] == [
        "baseline",
        "rebalanced",
        "-retrieved",
        "-synthesized",
        "-deduped",
        "-thinned",
        "-sampler",
    ]
    assert all(0.0 <= row["top1"] <= 1.0 for row in rows)
    assert (tmp_path / "out" / "ablation" / "sampler" / "report" / "report.html").is_file()
    shown = invoke("report", str(tmp_path / "out"))
    assert shown.exit_code == 0 and "report.html" in shown.output and "rebalanced" in shown.output


def test_compare_needs_a_report_with_two_runs(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"steps:\n  d: {{step: ingest_image_folder, root: {TINY.parent.parent / 'data/fashion_mnist_lt/test'}}}\n"
    )
    result = invoke("compare", str(pipeline), f"cache_dir={tmp_path / 'c'}")
    assert result.exit_code == 1 and "compare needs a `report` step" in result.output
