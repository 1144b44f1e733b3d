"""The README's figures are printed by a command: this test runs the command and compares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rebalance import api
from rebalance.report.panel import panel_markdown
from tests.conftest import REPO

DEMO = REPO / "pipelines" / "demo.yaml"
BLOCK = re.compile(
    r"<!-- begin: rebalance compare pipelines/demo\.yaml --markdown -->\n(.*?)<!-- end -->", re.DOTALL
)


def readme_panel() -> str:
    found = BLOCK.findall((REPO / "README.md").read_text())
    assert len(found) == 1, "the README has exactly one generated compare block"
    return found[0]


@pytest.mark.timeout(1800)  # 21 pipeline runs (7 variants × 3 seeds), 42 trainings: about 5 minutes here
def test_readme_panel_equals_what_compare_prints_at_the_pinned_seeds(tmp_path: Path) -> None:
    result = api.compare(DEMO, [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"], seeds=3)
    assert readme_panel() == panel_markdown(result)
    # The README's reading of the panel. CNN: the pipeline's data beats the best loss-only baseline
    # on rare classes and top-1 (paired intervals above zero) and no bucket drops beyond its interval.
    cnn = result["models"]["train_cnn"]
    assert cnn["best_loss_only"] == "LDAM-DRW"
    winner = next(row for row in cnn["rows"] if row["variant"] == "pipeline + LDAM-DRW")["vs_best"]
    assert winner["rare"]["low"] > 0 and winner["top1"]["low"] > 0
    assert all(winner[bucket]["high"] > 0 for bucket in ("common", "frequent"))
    # Probe: no pipeline variant beats logit adjustment on top-1 beyond its interval; with the demo's
    # class_prior: original it ties on top-1 and moves accuracy from frequent to common classes.
    probe = result["models"]["train_probe"]
    assert probe["best_loss_only"] == "logit adjustment"
    assert all(row["vs_best"]["top1"]["low"] < 0 for row in probe["rows"] if row["data"] == "rebalanced")
    default = next(row for row in probe["rows"] if row["variant"] == "pipeline + logit adjustment")["vs_best"]
    assert (
        default["top1"]["low"] < 0 < default["top1"]["high"]
        and default["rare"]["low"] < 0 < default["rare"]["high"]
    )
    assert default["common"]["low"] > 0 and default["frequent"]["high"] < 0
    with_ce = next(row for row in probe["rows"] if row["variant"] == "pipeline + CE")["vs_best"]
    assert with_ce["rare"]["high"] < 0
