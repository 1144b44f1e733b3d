from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "pipelines" / "tiny.yaml"
# The steps of pipelines/tiny.yaml (and demo_full.yaml) in the order they run: each as early as its
# inputs allow, ties in the order the YAML declares them.
TINY_STEPS = [
    "train",
    "test",
    "verified",
    "stats",
    "synonyms",
    "frequency",
    "pool",
    "outside",
    "embedded",
    "test_embedded",
    "pool_embedded",
    "outside_embedded",
    "pool_index",
    "retrieved",
    "retrieved_embedded",
    "baseline",
    "cnn_baseline",
    "synthesized",
    "synthesized_embedded",
    "deduped",
    "thinned",
    "sampled",
    "epochs",
    "rebalanced",
    "cnn_rebalanced",
    "export",
    "report",
]


def tree_digest(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path: equal dicts mean byte-identical trees."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in exclude
    }


@pytest.fixture
def run_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's cache and outputs inside the test's temp folder."""
    return [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
