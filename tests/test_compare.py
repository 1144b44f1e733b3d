from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rebalance import api
from rebalance.compare import PANEL, ablation_variants, paired_interval, summarise, upstream_steps
from rebalance.core.config import load_pipeline
from rebalance.report.panel import panel_markdown
from tests.helpers import TINY, invoke
from tests.steps.lvis_fixture import LVIS, lvis_overrides


def test_ablation_bypasses_each_stage_the_sampler_and_the_loss() -> None:
    config = load_pipeline(TINY, ["steps.rebalanced.sampler=repeat_factor"])
    assert ablation_variants(config, ["rebalanced", "cnn_rebalanced"]) == {
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
        "-sampled": ["steps.rebalanced.sampler=uniform"],
        "-logit_adjustment": ["steps.rebalanced.loss=ce"],
        "-ldam_drw": ["steps.cnn_rebalanced.loss=ce"],
    }


def _assert_every_stage_can_be_switched_off(pipeline: Path, overrides: list[str], trained: list[str]) -> None:
    """Each row-changing or sampling stage upstream of the rebalanced runs has a variant, and the
    variant's pipeline loads and no longer has that stage upstream of them."""
    config = load_pipeline(pipeline, overrides)
    variants = ablation_variants(config, trained)
    stages = [
        step_id
        for step_id in upstream_steps(config, trained)
        if config.steps[step_id].spec.role in ("adds_rows", "removes_rows", "sets_sampling")
    ]
    assert stages and all(f"-{step_id}" in variants for step_id in stages)
    for step_id in stages:
        ablated = load_pipeline(pipeline, [*overrides, *variants[f"-{step_id}"]])
        if config.steps[step_id].spec.role == "sets_sampling":
            assert all(ablated.steps[t].params.get("sampler", "uniform") == "uniform" for t in trained)
        else:
            assert step_id not in upstream_steps(ablated, trained)


def test_every_stage_of_the_tiny_pipeline_can_be_switched_off() -> None:
    _assert_every_stage_can_be_switched_off(
        TINY, ["steps.rebalanced.sampler=repeat_factor"], ["rebalanced", "cnn_rebalanced"]
    )


def test_every_stage_of_the_lvis_pipeline_diffusion_included_can_be_switched_off(tmp_path: Path) -> None:
    overrides = lvis_overrides(tmp_path)
    config = load_pipeline(LVIS, overrides)
    assert "-generated" in ablation_variants(config, ["rebalanced"])
    _assert_every_stage_can_be_switched_off(LVIS, overrides, ["rebalanced"])


def test_paired_interval_by_hand_and_against_scipy() -> None:
    # d = 0.1, 0.2, 0.3: mean 0.2, s_d = 0.1, t(0.975, 2) = 4.302653, half-width 4.302653 · 0.1 / √3.
    interval = paired_interval([0.1, 0.2, 0.3])
    assert interval["mean"] == pytest.approx(0.2)
    assert interval["high"] - interval["mean"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    mine, theirs = np.array([0.81, 0.77, 0.90, 0.84]), np.array([0.70, 0.74, 0.71, 0.80])
    reference = stats.ttest_rel(mine, theirs).confidence_interval(0.95)
    ours = paired_interval(list(mine - theirs))
    assert (ours["low"], ours["high"]) == pytest.approx((reference.low, reference.high))
    assert paired_interval([0.05]) == {"mean": 0.05, "low": None, "high": None}


def _runs(top1: list[float], rare: list[float]) -> list[dict[str, float | None]]:
    return [{"rare": r, "common": 0.5, "frequent": None, "top1": t} for t, r in zip(top1, rare, strict=True)]


def test_summary_pairs_each_variant_with_the_best_loss_only_baseline_seed_by_seed() -> None:
    runs = {
        "CE": _runs([0.60, 0.62], [0.0, 0.1]),
        "logit adjustment": _runs([0.70, 0.74], [0.4, 0.6]),
        "pipeline + CE": _runs([0.75, 0.77], [0.8, 0.8]),
    }
    summary = summarise(runs)
    assert summary["best_loss_only"] == "logit adjustment"
    rows = {row["variant"]: row for row in summary["rows"]}
    assert list(rows) == ["CE", "logit adjustment", "pipeline + CE"]  # the panel's order
    pipeline = rows["pipeline + CE"]
    assert pipeline["mean"]["top1"] == pytest.approx(0.76)
    assert pipeline["std"]["top1"] == pytest.approx(math.sqrt(2 * 0.01**2))
    # Paired: top-1 differences 0.05 and 0.03, rare 0.4 and 0.2.
    assert pipeline["vs_best"]["top1"]["mean"] == pytest.approx(0.04)
    assert pipeline["vs_best"]["rare"]["mean"] == pytest.approx(0.3)
    assert pipeline["vs_best"]["frequent"] is None  # no frequent class in the test set
    assert rows["logit adjustment"]["vs_best"]["top1"] is None  # the reference itself
    table = panel_markdown({"seeds": [0, 1], "models": {"train_probe": summary}, "ablation": []})
    assert "| pipeline + CE | rebalanced | 0.800 ± 0.000 | 0.500 ± 0.000 | – | 0.760 ± 0.014 |" in table
    assert "| pipeline + CE | +0.300 [" in table


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []

    def handle_data(self, data: str) -> None:
        self.cells.append(data)


@pytest.mark.slow
def test_compare_panel_on_the_tiny_pipeline(run_dirs: list[str], tmp_path: Path) -> None:
    result = api.compare(TINY, run_dirs, seeds=2)
    assert result["seeds"] == [0, 1]
    assert list(result["models"]) == ["train_probe", "train_cnn"]
    for summary in result["models"].values():
        assert [row["variant"] for row in summary["rows"]] == [variant.name for variant in PANEL]
        assert summary["best_loss_only"] in {"CE", "logit adjustment", "cRT", "LDAM-DRW"}
        for row in summary["rows"]:
            assert len(row["runs"]) == 2
    # Each run is a real pipeline run: its report holds what the panel read.
    report = json.loads(
        (tmp_path / "out" / "compare" / "seed1" / "ldam_drw" / "report" / "report.json").read_text()
    )
    ldam = next(r for r in result["models"]["train_cnn"]["rows"] if r["variant"] == "LDAM-DRW")
    assert ldam["runs"][1]["top1"] == report["accuracy"]["cnn_baseline"]["top1"]
    manifest = json.loads((tmp_path / "out" / "compare" / "seed1" / "ldam_drw" / "manifest.json").read_text())
    cnn = next(step for step in manifest["steps"] if step["id"] == "cnn_baseline")
    assert cnn["components"]["params"]["loss"] == "ldam_drw" and cnn["components"]["params"]["seed"] == 1
    written = tmp_path / "out" / "compare"
    assert (written / "panel.md").read_text() == panel_markdown(result)
    parser = _Cells()
    parser.feed((written / "index.html").read_text())
    assert "pipeline + logit adjustment" in parser.cells
    # The panel page shows the seed-0 pipeline run's gallery, its report copied beside the page.
    page = (written / "index.html").read_text()
    thumbnails = re.findall(r'<img src="(report/gallery/img/[0-9a-f]+\.jpg)"', page)
    assert 'id="gallery"' in page and thumbnails and all((written / src).is_file() for src in thumbnails)
    assert (written / "report" / "report.html").is_file() and (
        written / "report" / "gallery" / "index.html"
    ).is_file()
    # The same figures from the command line, as markdown; `rebalance report` points to the panel.
    shown = invoke("compare", str(TINY), *run_dirs, "--seeds", "2", "--markdown")
    assert shown.exit_code == 0 and shown.output == panel_markdown(result)
    api.run(TINY, run_dirs)
    assert (
        f"baselines panel (rebalance compare): {written / 'index.html'}"
        in invoke("report", str(tmp_path / "out")).output
    )


def test_compare_needs_a_report_with_two_runs(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"steps:\n  d: {{step: ingest_image_folder, root: {TINY.parent.parent / 'data/fashion_mnist_lt/test'}}}\n"
    )
    result = invoke("compare", str(pipeline), f"cache_dir={tmp_path / 'c'}")
    assert result.exit_code == 1 and "compare needs a `report` step" in result.output


@pytest.mark.slow
def test_ablation_turns_each_stage_off_for_both_models(run_dirs: list[str], tmp_path: Path) -> None:
    result = api.compare(TINY, run_dirs, seeds=1, ablation=True)
    assert [row["variant"] for row in result["ablation"]] == [
        "-retrieved",
        "-synthesized",
        "-deduped",
        "-thinned",
        "-logit_adjustment",
        "-ldam_drw",
    ]
    without_retrieval = tmp_path / "out" / "ablation" / "retrieved"
    manifest = json.loads((without_retrieval / "manifest.json").read_text())
    assert "retrieved" not in manifest["config"]["steps"]["retrieved_embedded"]["inputs"].values()
    report = json.loads((without_retrieval / "report" / "report.json").read_text())
    row = result["ablation"][0]["models"]
    assert row["train_cnn"]["top1"] == report["accuracy"]["cnn_rebalanced"]["top1"]
    assert row["train_probe"]["top1"] == report["accuracy"]["rebalanced"]["top1"]
    assert report["retrieval"]["retrieved"] == 0 and result["data"]["retrieval"]["retrieved"] > 0
    assert "ablation: the rebalanced runs with one stage off (seed 0)" in panel_markdown(result)
