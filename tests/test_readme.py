"""The README's figures are printed by a command: this test runs the command and compares."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_readme_panel_equals_what_compare_prints_at_the_pinned_seeds(tmp_path: Path) -> None:
    result = api.compare(DEMO, [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"], seeds=3)
    assert readme_panel() == panel_markdown(result)
