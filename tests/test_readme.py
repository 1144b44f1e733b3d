"""The README's figures are printed by a command: this test runs the command and checks them.

Training on CPU is byte-identical from run to run on one machine (tests/core/test_runner.py checks
that), but not across machines: BLAS kernels, instruction sets and thread counts change the last
bits of a matmul, and training amplifies them. So the README keeps the panel of the machine that
made it, and this test checks what holds on any machine: every mean lies within a tolerance drawn
from the two runs' own seed spread, the best loss-only baseline is the same, and every difference
whose interval excludes zero in the README keeps its sign.
"""

from __future__ import annotations

import math
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
CAPTION = re.compile(
    r"^\*\*(\w+): (test accuracy|difference to the best loss-only baseline \(([^,]+), by top-1\))"
)
MEAN_STD = re.compile(r"^([0-9.]+) ± ([0-9.]+)$")
DIFFERENCE = re.compile(r"^([+-][0-9.]+) \[([+-][0-9.]+), ([+-][0-9.]+)\]$")


def readme_panel() -> str:
    found = BLOCK.findall((REPO / "README.md").read_text())
    assert len(found) == 1, "the README has exactly one generated compare block"
    return found[0]


def parse_panel(markdown: str) -> dict[str, dict]:
    """model -> {"best": name, "accuracy": {variant: [(mean, std) per metric]}, "difference":
    {variant: [(mean, low, high) per metric]}} from ``panel_markdown``'s tables."""
    models: dict[str, dict] = {}
    table = None
    for line in markdown.splitlines():
        if caption := CAPTION.match(line):
            model = models.setdefault(caption[1], {"accuracy": {}, "difference": {}})
            table = model["accuracy"] if caption[2] == "test accuracy" else model["difference"]
            if caption[3]:
                model["best"] = caption[3]
        elif line.startswith("| ") and table is not None and not line.startswith("| variant"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            # The last four cells are the metrics: "mean ± std" or "mean [low, high]".
            table[cells[0]] = [
                tuple(float(x) for x in (MEAN_STD.match(cell) or DIFFERENCE.match(cell)).groups())
                for cell in cells[-4:]
            ]
    return models


def test_the_panel_parser_reads_what_panel_markdown_writes() -> None:
    parsed = parse_panel(readme_panel())
    assert set(parsed) == {"train_probe", "train_cnn"}
    for model in parsed.values():
        assert len(model["accuracy"]) == 7 and len(model["difference"]) == 6
        assert model["best"] in model["accuracy"] and model["best"] not in model["difference"]
        assert all(len(v) == 4 and all(len(x) == 2 for x in v) for v in model["accuracy"].values())
        assert all(len(v) == 4 and all(len(x) == 3 for x in v) for v in model["difference"].values())


def agreement_problems(readme: dict[str, dict], fresh: dict[str, dict], seeds: int) -> list[str]:
    """Where a fresh panel disagrees with the README's beyond what machine noise explains.

    A mean may move by 3 standard errors of the difference of two means over ``seeds`` seeds (each
    run's own std) plus 0.01, one test image of the rare bucket: training on another machine draws
    new noise, it does not shift the method. A difference whose README interval excludes zero must
    keep its sign, and the best loss-only baseline must be the same.
    """
    problems = []
    for model, then in readme.items():
        now = fresh[model]
        if now["best"] != then["best"]:
            problems.append(f"{model}: best loss-only baseline {now['best']} (README: {then['best']})")
        for variant, cells in then["accuracy"].items():
            for metric, ((mean, std), (fresh_mean, fresh_std)) in enumerate(
                zip(cells, now["accuracy"][variant], strict=True)
            ):
                tolerance = 3 * math.sqrt((std**2 + fresh_std**2) / seeds) + 0.01
                if abs(fresh_mean - mean) > tolerance:
                    problems.append(
                        f"{model} {variant} metric {metric}: {fresh_mean:.3f} vs README {mean:.3f} ± {tolerance:.3f}"
                    )
        for variant, cells in then["difference"].items():
            for metric, ((_, low, high), (fresh_mean, _, _)) in enumerate(
                zip(cells, now["difference"][variant], strict=True)
            ):
                if (low > 0 and fresh_mean <= 0) or (high < 0 and fresh_mean >= 0):
                    problems.append(
                        f"{model} {variant} metric {metric}: difference {fresh_mean:+.3f}, README [{low:+.3f}, {high:+.3f}]"
                    )
    return problems


def test_agreement_flags_a_moved_mean_a_flipped_sign_and_another_best() -> None:
    readme = parse_panel(readme_panel())
    assert agreement_problems(readme, readme, seeds=3) == []
    model = next(iter(readme))
    variant = next(iter(readme[model]["accuracy"]))
    moved = parse_panel(readme_panel())
    mean, std = moved[model]["accuracy"][variant][0]
    moved[model]["accuracy"][variant][0] = (mean + 3 * std + 0.05, std)
    assert len(agreement_problems(readme, moved, seeds=3)) == 1
    flipped = parse_panel(readme_panel())
    name, cells = next(
        (v, c) for v, c in flipped[model]["difference"].items() if any(lo > 0 or hi < 0 for _, lo, hi in c)
    )
    metric = next(i for i, (_, lo, hi) in enumerate(cells) if lo > 0 or hi < 0)
    cells[metric] = (-cells[metric][0], 0.0, 0.0)
    assert [p for p in agreement_problems(readme, flipped, seeds=3) if "difference" in p]
    other = parse_panel(readme_panel())
    other[model]["best"] = "CE"
    assert any("best loss-only" in p for p in agreement_problems(readme, other, seeds=3))


@pytest.mark.timeout(1800)  # 21 pipeline runs (7 variants × 3 seeds), 42 trainings
def test_readme_panel_holds_on_this_machine_at_the_pinned_seeds(tmp_path: Path) -> None:
    result = api.compare(DEMO, [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"], seeds=3)
    fresh = panel_markdown(result)
    readme = readme_panel()
    # The summary line: what retrieval added at seed 0 and its precision, from PCA features whose
    # last bits may differ on another machine too.
    summary = re.compile(r"retrieved ([0-9,]+) pool images \(([0-9.]+)%")
    (count, precision), (fresh_count, fresh_precision) = (
        summary.search(text).groups() for text in (readme, fresh)
    )
    assert abs(int(fresh_count.replace(",", "")) - int(count.replace(",", ""))) <= 0.02 * int(
        count.replace(",", "")
    )
    assert abs(float(fresh_precision) - float(precision)) <= 2.0
    assert agreement_problems(parse_panel(readme), parse_panel(fresh), seeds=3) == []
