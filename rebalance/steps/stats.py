"""Per-class statistics and LVIS-style frequency buckets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import PositiveInt

from rebalance.core.artifacts import ClassStats, LabeledDataset
from rebalance.core.registry import step

BUCKETS = ("rare", "common", "frequent")
_LVIS_CODES = {"r": "rare", "c": "common", "f": "frequent"}


def class_counts(dataset: LabeledDataset) -> tuple[np.ndarray, np.ndarray]:
    """Images and instances per category, aligned with ``dataset.categories`` rows."""
    category_ids = dataset.categories["category_id"].to_numpy()
    annotations = dataset.annotations
    positions = pc.index_in(annotations["category_id"], value_set=dataset.categories["category_id"]).to_numpy(
        zero_copy_only=False
    )
    instances = np.bincount(positions, minlength=len(category_ids))
    unique_pairs = (
        annotations.select(["image_id", "category_id"]).group_by(["image_id", "category_id"]).aggregate([])
    )
    pair_positions = pc.index_in(
        unique_pairs["category_id"], value_set=dataset.categories["category_id"]
    ).to_numpy(zero_copy_only=False)
    images = np.bincount(pair_positions, minlength=len(category_ids))
    return images, instances


def expected_draws_per_epoch(dataset: LabeledDataset) -> np.ndarray:
    """Σ of ``repeat_factor`` over the images containing each class: its expected images per epoch."""
    pairs = (
        dataset.annotations.select(["image_id", "category_id"])
        .group_by(["image_id", "category_id"])
        .aggregate([])
    )
    weighted = pairs.join(dataset.images.select(["image_id", "repeat_factor"]), "image_id")
    positions = pc.index_in(weighted["category_id"], value_set=dataset.categories["category_id"]).to_numpy(
        zero_copy_only=False
    )
    return np.bincount(
        positions, weights=weighted["repeat_factor"].to_numpy(), minlength=dataset.categories.num_rows
    )


def removed_per_class(original: LabeledDataset, removed: pa.Table) -> dict[str, np.ndarray]:
    """For each step that removed images (in the order they ran), images removed per class of ``original``."""
    per_step = {}
    for step_name in dict.fromkeys(removed["step"].to_pylist()):
        ids = removed.filter(pc.equal(removed["step"], step_name))["image_id"]
        annotations = original.annotations.filter(pc.is_in(original.annotations["image_id"], value_set=ids))
        per_step[step_name] = class_counts(dataclasses.replace(original, annotations=annotations))[0]
    return per_step


def frequency_buckets(
    image_counts: np.ndarray, rare_max_images: int = 10, common_max_images: int = 100
) -> list[str]:
    """LVIS buckets by training images per class: rare ≤ 10 < common ≤ 100 < frequent (Gupta et al., 2019)."""
    return [
        "rare" if n <= rare_max_images else "common" if n <= common_max_images else "frequent"
        for n in image_counts
    ]


def compute_class_stats(
    dataset: LabeledDataset, *, rare_max_images: int = 10, common_max_images: int = 100
) -> ClassStats:
    images, instances = class_counts(dataset)
    declared = dataset.categories["frequency"].to_pylist()
    if all(code in _LVIS_CODES for code in declared):
        buckets, bucket_source = [_LVIS_CODES[code] for code in declared], "dataset"
    else:
        buckets, bucket_source = frequency_buckets(images, rare_max_images, common_max_images), "computed"
    total = max(int(images.sum()), 1)
    table = pa.table(
        {
            "category_id": dataset.categories["category_id"],
            "name": dataset.categories["name"],
            "images": pa.array(images, pa.int64()),
            "instances": pa.array(instances, pa.int64()),
            "image_share": pa.array(images / total, pa.float64()),
            "bucket": buckets,
        }
    )
    nonzero = images[images > 0]
    summary = {
        "classes": len(images),
        "images": dataset.num_rows,
        "instances": int(instances.sum()),
        "empty_classes": dataset.categories["name"].filter(pa.array(images == 0)).to_pylist(),
        "imbalance_ratio": float(nonzero.max() / nonzero.min()) if len(nonzero) else None,
        "bucket_source": bucket_source,
        "classes_per_bucket": {b: buckets.count(b) for b in BUCKETS},
        "removed_images": dataset.removed.num_rows,
    }
    return ClassStats(table, summary)


@step("class_stats")
def class_stats(
    dataset: LabeledDataset, *, rare_max_images: PositiveInt = 10, common_max_images: PositiveInt = 100
) -> ClassStats:
    """Images and instances per class, imbalance ratio, and rare/common/frequent buckets.

    Buckets use the dataset's own LVIS ``frequency`` field when every class has one; otherwise
    they are computed from training images per class (rare ≤ rare_max_images < common ≤
    common_max_images < frequent). Imbalance ratio = max / min images over non-empty classes.
    """
    return compute_class_stats(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
