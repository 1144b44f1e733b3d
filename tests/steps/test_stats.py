from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa

from rebalance.domain.artifacts import (
    LabeledDataset,
)
from rebalance.domain.classes import class_counts, frequency_buckets
from rebalance.domain.ledger import stage_changes
from rebalance.steps.ingest import ingest_coco
from rebalance.steps.stats import class_stats
from tests.steps.lvis_fixture import build_lvis


def classification(counts: list[int]) -> LabeledDataset:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    names = [f"c{i}" for i in range(len(counts))]
    return LabeledDataset.classification([f"{i}.png" for i in range(len(labels))], labels, names)


def test_bucket_edges_follow_lvis() -> None:
    assert frequency_buckets(np.array([0, 1, 10, 11, 100, 101])) == [
        "rare",
        "rare",
        "rare",
        "common",
        "common",
        "frequent",
    ]


def test_hand_computed_classification_stats() -> None:
    stats = class_stats(classification([120, 40, 4, 0]))
    assert stats.table["images"].to_pylist() == [120, 40, 4, 0]
    assert stats.table["bucket"].to_pylist() == ["frequent", "common", "rare", "rare"]
    assert stats.table["image_share"].to_pylist() == [120 / 164, 40 / 164, 4 / 164, 0.0]
    assert stats.summary["imbalance_ratio"] == 30.0  # 120 / 4: empty classes are not in the ratio
    assert stats.summary["empty_classes"] == ["c3"]
    assert stats.summary["classes_per_bucket"] == {"rare": 2, "common": 1, "frequent": 1}


def test_detection_counts_images_and_instances_separately(tmp_path: Path) -> None:
    annotations, root = build_lvis(tmp_path)
    stats = class_stats(ingest_coco(annotations=annotations, image_root=root))
    # 6 images: images 1-2 hold two bananas and one aerosol can, images 3-6 one banana each.
    rows = {r["name"]: r for r in stats.table.to_pylist()}
    assert (rows["banana"]["images"], rows["banana"]["instances"]) == (6, 8)
    assert (rows["aerosol_can"]["images"], rows["aerosol_can"]["instances"]) == (2, 2)
    assert (rows["alcohol"]["images"], rows["alcohol"]["instances"]) == (0, 0)
    # LVIS's own frequency field wins over counts from this small subset.
    assert [rows[n]["bucket"] for n in ("aerosol_can", "alcohol", "banana")] == ["common", "rare", "frequent"]
    assert stats.summary["bucket_source"] == "dataset"


def test_stage_changes_account_for_every_row_added_and_removed() -> None:
    """original + Σ changes = final per class, also for added rows that a later step removed."""
    labels = [0, 0, 0, 1, 1, 1, 1]  # rows 5 and 6 are added by retrieval
    grown = LabeledDataset.classification([f"{i}.png" for i in range(7)], labels, ["a", "b"])
    sources = pa.array(["original"] * 5 + ["retrieved"] * 2)
    grown = dataclasses.replace(grown, images=grown.images.set_column(5, "source", sources))
    original = LabeledDataset.classification([f"{i}.png" for i in range(5)], labels[:5], ["a", "b"])
    final = grown.drop(np.array([1, 0, 0, 0, 0, 0, 1], bool), "semdedup", ["copy of 2", "copy of 5"])
    final = final.drop(np.array([0, 1, 0, 0, 0], bool), "entity_thinning", ["p = 0.5"])
    changes = stage_changes(original, final)
    assert {k: v.tolist() for k, v in changes.items()} == {
        "+retrieved": [0, 2],
        "-semdedup": [-1, -1],
        "-entity_thinning": [-1, 0],
    }
    assert (class_counts(original)[0] + sum(changes.values())).tolist() == class_counts(final)[0].tolist()
    assert final.removed.to_pylist()[1]["source"] == "retrieved"
    assert final.removed.to_pylist()[1]["category_ids"] == [1]
