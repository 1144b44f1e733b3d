"""The documentation stays true to the code: the steps reference is generated from the step registry,
the README stays short enough to onboard, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rebalance import api
from rebalance.core.registry import all_steps
from tests.helpers import REPO

README = REPO / "README.md"
STEPS_MD = REPO / "docs" / "steps.md"
REGENERATE = "rebalance steps --markdown > docs/steps.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.DOTALL | re.MULTILINE)


def built_in_steps() -> list[str]:
    # Other tests register steps of their own in this process; the reference documents the ones
    # rebalance ships.
    return [name for name, spec in all_steps().items() if spec.fn.__module__.startswith("rebalance.steps.")]


def test_docs_steps_md_is_the_generated_reference() -> None:
    # A fresh process, as a user's shell starts one: it knows the installed steps (entry points) and
    # none of the steps other tests register in this one.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    rebalance = str(Path(sys.executable).parent / "rebalance")
    result = subprocess.run(
        [rebalance, "steps", "--markdown"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert STEPS_MD.read_text() == result.stdout, f"docs/steps.md is out of date: run `{REGENERATE}`"


def test_every_built_in_step_is_in_docs_steps_md() -> None:
    text = STEPS_MD.read_text()
    missing = [name for name in built_in_steps() if f"\n### {name}\n" not in text]
    assert not missing, f"not in docs/steps.md: {missing}; run `{REGENERATE}`"


def test_the_reference_has_every_registered_step_with_its_inputs_and_parameters() -> None:
    specs = all_steps()  # whatever is registered here, test steps included
    text = api.steps_reference(specs)
    for name, spec in specs.items():
        section = text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"[`{name}`](#{name})" in text
        for spec_input in spec.inputs:
            assert f"| `{spec_input.name}` | `{spec_input.artifact_type.__name__}` |" in section
        for param in spec.params:
            assert f"| `{param.name}` |" in section
    retrieve = text.split("\n### retrieve\n", 1)[1].split("\n### ", 1)[0]
    assert "| `embeddings` | `Embeddings` | yes |" in retrieve
    assert "| `query` | `'image' \\| 'text' \\| 'both'` | `'image'` |" in retrieve
    assert "| `seed` | `int` | `0`, from the pipeline's `seed` |" in retrieve


def table_problems(text: str) -> list[str]:
    """Table rows whose cell count differs from their header's: an unescaped ``|`` in a type or a
    default would split a cell."""
    problems, width = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            width = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line)) - 2
        if width is None:
            width = cells
        elif cells != width:
            problems.append(f"line {number}: {cells} cells, header has {width}")
    return problems


def test_docs_steps_md_tables_are_well_formed() -> None:
    assert table_problems(STEPS_MD.read_text()) == []
    assert table_problems("| a | b |\n|---|---|\n| `x | y` | z |\n") == ["line 3: 3 cells, header has 2"]


def test_the_readme_stays_an_onboarding_page() -> None:
    text = README.read_bytes()
    lines = len(text.decode().splitlines())
    assert lines <= 200, f"README.md has {lines} lines (at most 200): move detail to a docs/ page"
    assert len(text) <= 16384, f"README.md is {len(text)} bytes (at most 16 KiB): move detail to a docs/ page"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ... are not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_slug_matches_github_anchors() -> None:
    assert slug("How `rebalance compare` makes the panels") == "how-rebalance-compare-makes-the-panels"
    assert slug("Detector trainers (detectron2, mmdet)") == "detector-trainers-detectron2-mmdet"
    assert slug("fill_index") == "fill_index"
