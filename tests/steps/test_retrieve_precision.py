"""The precision estimate on the shipped demo data, against the pool's reference labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from rebalance import api
from rebalance.domain.artifacts import LabeledDataset
from tests.helpers import REPO

# The demo's retrieval, as in pipelines/demo.yaml, with the gate given as a parameter.
PIPELINE = """
name: precision
extends: {configs}/fashion_mnist_lt.yaml
steps:
  pool:
    step: ingest_pool
    root: {data}/fashion_mnist_lt/pool
    reference_labels: {data}/fashion_mnist_lt/pool_labels.csv
  outside:
    step: ingest_pool
    root: {data}/outside_canaries
  embedded:
    step: embed_pixels_pca
    inputs: {{dataset: verified}}
  pool_embedded:
    step: embed_pixels_pca
    inputs: {{dataset: pool, fit: verified}}
  outside_embedded:
    step: embed_pixels_pca
    inputs: {{dataset: outside, fit: verified}}
  pool_index:
    step: build_index
    inputs: {{embeddings: pool_embedded}}
  retrieved:
    step: retrieve
    inputs: {{dataset: verified, pool: pool, index: pool_index, embeddings: embedded, outside: outside_embedded}}
    image_query: examples
    max_per_class: 50
    vote_k: 10
"""


def open_retrieval(folder: Path, split: str = "fashion_mnist_lt") -> Path:
    """The demo's retrieval on ``split`` with the gate off, run under ``folder``."""
    pipeline = folder / "precision.yaml"
    pipeline.write_text(PIPELINE.format(configs=REPO / "configs", data=REPO / "data"))
    overrides = [
        f"cache_dir={folder / 'cache'}",
        f"output_dir={folder / 'out'}",
        "steps.retrieved.min_precision=null",
        f"steps.train.root={REPO / 'data' / split / 'train'}",
        f"steps.pool.root={REPO / 'data' / split / 'pool'}",
        f"steps.pool.reference_labels={REPO / 'data' / split / 'pool_labels.csv'}",
    ]
    api.run(pipeline, overrides)
    return folder


@pytest.fixture(scope="module")
def demo_retrieval(tmp_path_factory) -> Path:
    return open_retrieval(tmp_path_factory.mktemp("precision"))


def overall(measured: dict[str, tuple[int, float]]) -> tuple[int, float]:
    count = sum(n for n, _ in measured.values())
    return count, sum(n * share for n, share in measured.values()) / count


def test_the_confusable_split_defeats_image_only_retrieval_without_the_gate(tmp_path: Path) -> None:
    # The README's figures for data/fashion_mnist_lt_confusable: 208 images, 64 % right, shirt 28 %.
    measured = reference_precision(retrieved(open_retrieval(tmp_path, "fashion_mnist_lt_confusable")))
    count, precision = overall(measured)
    assert abs(count - 208) <= 4 and abs(precision - 0.644) <= 0.02
    assert abs(measured["shirt"][1] - 0.28) <= 0.03


def retrieved(folder: Path) -> LabeledDataset:
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    record = next(step for step in manifest["steps"] if step["id"] == "retrieved")
    return LabeledDataset.read(folder / "cache" / "retrieve" / record["key"])


def reference_precision(dataset: LabeledDataset) -> dict[str, tuple[int, float]]:
    """Per class: retrieved rows and the share whose pool reference label is that class."""
    images = dataset.images.filter(pc.equal(dataset.images["source"], "retrieved"))
    names = dict(zip(dataset.categories["category_id"].to_pylist(), dataset.class_names(), strict=True))
    classes = dict(
        zip(
            dataset.annotations["image_id"].to_pylist(),
            dataset.annotations["category_id"].to_pylist(),
            strict=False,
        )
    )
    right: dict[str, list[bool]] = {}
    for image_id, reference in zip(
        images["image_id"].to_pylist(), images["reference_label"].to_pylist(), strict=True
    ):
        name = names[classes[image_id]]
        right.setdefault(name, []).append(reference == name)
    return {name: (len(hits), float(np.mean(hits))) for name, hits in right.items()}


def test_the_estimate_agrees_with_the_reference_labels_on_the_demo(demo_retrieval: Path) -> None:
    dataset = retrieved(demo_retrieval)
    table = dataset.categories.to_pylist()
    measured = reference_precision(dataset)
    # The README's figures for the demo with the gate off: 205 images, 91.7 % right.
    count, precision = overall(measured)
    assert abs(count - 205) <= 4 and abs(precision - 0.917) <= 0.02
    rows = [row for row in table if measured.get(row["name"], (0, 0))[0] >= 20]
    assert len(rows) >= 4
    errors = [abs(row["precision_estimate"] - measured[row["name"]][1]) for row in rows]
    inside = [row["precision_low"] <= measured[row["name"]][1] <= row["precision_high"] for row in rows]
    # docs/retrieval_precision.md: within 8.1 points on average, every reference precision inside its interval.
    assert float(np.mean(errors)) <= 0.10, list(zip([r["name"] for r in rows], errors, strict=True))
    assert abs(float(np.mean(errors)) - 0.081) <= 0.02
    assert float(np.mean(inside)) >= 0.8
    for row in table:  # without a gate, every class kept what it was offered
        assert row["retrieval_kept"] == row["retrieval_candidates"] <= row["retrieval_quota"]
        assert (row["retrieval_shortfall"] is None) == (row["retrieval_kept"] == row["retrieval_quota"])


def test_the_gate_keeps_a_prefix_of_what_the_open_run_offered_and_says_why(demo_retrieval: Path) -> None:
    folder = demo_retrieval
    pipeline = folder / "precision.yaml"
    overrides = [
        f"cache_dir={folder / 'cache'}",
        f"output_dir={folder / 'gated'}",
        "steps.retrieved.min_precision=0.99",
    ]
    result = api.run(pipeline, overrides)
    assert result is not None
    manifest = json.loads((folder / "gated" / "manifest.json").read_text())
    record = next(step for step in manifest["steps"] if step["id"] == "retrieved")
    gated = LabeledDataset.read(folder / "cache" / "retrieve" / record["key"])
    open_run = retrieved(folder)
    by_name = {row["name"]: row for row in open_run.categories.to_pylist()}
    stopped = 0
    for row in gated.categories.to_pylist():
        before = by_name[row["name"]]
        assert row["retrieval_candidates"] == before["retrieval_candidates"]
        assert row["retrieval_kept"] <= before["retrieval_kept"]
        if row["retrieval_kept"] < row["retrieval_candidates"]:
            stopped += 1
            assert row["retrieval_shortfall"].startswith("precision gate: kept")
    assert stopped >= 1
    pool_ids = lambda d: set(  # noqa: E731
        d.images.filter(pc.equal(d.images["source"], "retrieved"))["pool_image_id"].to_pylist()
    )
    assert pool_ids(gated) <= pool_ids(open_run)
