"""Fixtures only: shared code lives in tests/helpers.py (tests/test_suite_layout.py checks both)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebalance import api
from rebalance.core.runner import RunResult
from tests.helpers import TINY, tree_digest


@pytest.fixture(scope="session", autouse=True)
def _forms_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Synonym forms are cached per session (and in the CLI processes tests start), not in ~/.cache."""
    import os

    previous = os.environ.get("REBALANCE_FORMS_CACHE")
    os.environ["REBALANCE_FORMS_CACHE"] = str(tmp_path_factory.mktemp("forms"))
    yield
    if previous is None:
        del os.environ["REBALANCE_FORMS_CACHE"]
    else:
        os.environ["REBALANCE_FORMS_CACHE"] = previous


@pytest.fixture
def run_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's cache and outputs inside the test's temp folder."""
    return [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]


@pytest.fixture(scope="session")
def _tiny_run_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, dict[str, str]]:
    """One cold run of pipelines/tiny.yaml per session (cache in ``cache/``, outputs in ``out/`` of
    one folder), and the digest of every file in that folder."""
    root = tmp_path_factory.mktemp("tiny_run")
    result = api.run(TINY, [f"cache_dir={root / 'cache'}", f"output_dir={root / 'out'}"])
    return result, tree_digest(root, exclude=())


@pytest.fixture
def tiny_run(_tiny_run_once: tuple[RunResult, dict[str, str]]) -> Iterator[RunResult]:
    """The session's cold run of pipelines/tiny.yaml (``output_dir``, ``manifest``), to read only.

    ``output_dir.parent`` holds ``cache/`` and ``out/``; the manifest is a copy per test. The test
    fails at teardown if it changed a byte under that folder: a test that reruns, changes the config
    or writes into the cache or the outputs makes its own run (``api.run(TINY, run_dirs)``).
    """
    result, digest = _tiny_run_once
    yield dataclasses.replace(result, manifest=copy.deepcopy(result.manifest))
    now = tree_digest(result.output_dir.parent, exclude=())
    changed = sorted(path for path in digest.keys() | now.keys() if digest.get(path) != now.get(path))
    assert not changed, (
        f"files of the shared tiny run {result.output_dir.parent} changed: {changed[:10]}; tests that "
        "use tiny_run only read it (the first test that fails here wrote into it)"
    )
