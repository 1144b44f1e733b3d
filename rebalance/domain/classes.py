"""Classes as the pipeline sees them: images and instances per class, LVIS-style frequency buckets,
and the quotas every adding stage fills towards one balance target."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.domain.artifacts import ClassStats, ConceptFrequency, LabeledDataset
from rebalance.errors import DataError

BUCKETS = ("rare", "common", "frequent")
_LVIS_CODES = {"r": "rare", "c": "common", "f": "frequent"}


Target = Literal["median", "mean", "max"]


def class_quotas(
    counts: np.ndarray,
    target: Target | int,
    *,
    reference: np.ndarray | None = None,
    max_per_class: int | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Items to add per class: quota_c = min(cap, max(0, T − n_c)) for eligible classes, else 0.

    T is the median / mean / max (rounded up) of the ``reference`` counts (default: ``counts``),
    or a fixed number. ``eligible`` (bool per class) restricts it, e.g. to REAL's concept tail.
    """
    counts = np.asarray(counts, dtype=np.int64)
    reference = counts if reference is None else np.asarray(reference, dtype=np.int64)
    if isinstance(target, str):
        goal = (
            {"median": np.median, "mean": np.mean, "max": np.max}[target](reference) if len(reference) else 0
        )
        goal = int(np.ceil(goal))
    else:
        goal = int(target)
    quotas = np.maximum(goal - counts, 0)
    if max_per_class is not None:
        quotas = np.minimum(quotas, max_per_class)
    if eligible is not None:
        quotas = np.where(eligible, quotas, 0)
    return quotas


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


def class_buckets(
    dataset: LabeledDataset, *, rare_max_images: int = 10, common_max_images: int = 100
) -> list[str]:
    """Each class's rare / common / frequent bucket (``compute_class_stats``'s rule)."""
    stats = compute_class_stats(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
    return stats.table["bucket"].to_pylist()


def freeze_buckets(
    dataset: LabeledDataset, *, rare_max_images: int = 10, common_max_images: int = 100
) -> LabeledDataset:
    """The dataset with each class's rare/common/frequent bucket fixed at its current counts.

    Called before a stage adds rows: a tail class filled to the median must stay a tail class for
    the steps after (head dedup and thinning never touch the tail), so the bucket is written as
    LVIS's r/c/f code unless the dataset already declares one.
    """
    stats = compute_class_stats(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
    if stats.summary["bucket_source"] == "dataset":
        return dataset
    codes = pa.array([bucket[0] for bucket in stats.table["bucket"].to_pylist()], pa.string())
    categories = dataset.categories
    return dataclasses.replace(
        dataset,
        categories=categories.set_column(categories.schema.get_field_index("frequency"), "frequency", codes),
    )


def balance_quotas(
    dataset: LabeledDataset,
    target: Target | int,
    *,
    max_per_class: int | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Images to add per class so that each reaches the balance target, for every adding stage.

    The target T (median / mean / max, or a number) is taken over the counts of the *original*
    rows, so retrieval and the synthesis after it aim at the same T; the quota is
    min(max_per_class, T − current count), so synthesis makes only what retrieval could not fill.
    """
    original = dataset.images.filter(pc.equal(dataset.images["source"], "original"))["image_id"]
    annotations = dataset.annotations.filter(pc.is_in(dataset.annotations["image_id"], value_set=original))
    reference = class_counts(dataclasses.replace(dataset, annotations=annotations))[0]
    return class_quotas(
        class_counts(dataset)[0], target, reference=reference, max_per_class=max_per_class, eligible=eligible
    )


def concept_tail(dataset: LabeledDataset, frequency: ConceptFrequency) -> np.ndarray:
    """Per class of ``dataset``, whether REAL's concept frequency puts it in the tail."""
    tail = dict(zip(frequency.table["concept"].to_pylist(), frequency.table["tail"].to_pylist(), strict=True))
    unknown = [name for name in dataset.class_names() if name not in tail]
    if unknown:
        raise DataError(
            f"the frequency table has no row for class(es) {unknown[:5]}; mine synonyms from this dataset"
        )
    return np.array([tail[name] for name in dataset.class_names()], dtype=bool)
