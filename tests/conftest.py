"""Fixtures only: shared code lives in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def run_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's cache and outputs inside the test's temp folder."""
    return [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
