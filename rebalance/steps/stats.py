"""Per-class statistics and LVIS-style frequency buckets."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import PositiveInt

from rebalance.core.artifacts import ClassStats, LabeledDataset
from rebalance.core.registry import step
from rebalance.retrieval import Target, class_quotas

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


def stage_changes(original: LabeledDataset, final: LabeledDataset) -> dict[str, np.ndarray]:
    """What each stage between ``original`` and ``final`` did to each class, in images (signed).

    ``+<source>`` for every source of added rows (``retrieved``, ``synthetic``): the rows added,
    counting those a later step removed again; then ``-<step>`` for each step that removed rows
    after ``original``, in the order they ran. ``original`` + Σ changes = ``final``, per class.
    """
    earlier = set(
        zip(original.removed["image_id"].to_pylist(), original.removed["step"].to_pylist(), strict=True)
    )
    removed = final.removed
    later = pa.array(
        [
            pair not in earlier
            for pair in zip(removed["image_id"].to_pylist(), removed["step"].to_pylist(), strict=True)
        ],
        pa.bool_(),
    )
    removed = removed.filter(later) if len(removed) else removed
    categories = final.categories["category_id"]
    changes: dict[str, np.ndarray] = {}
    # Rows added after `original`: still in `final`, or removed again by a later step.
    new_images = final.images.filter(
        pc.invert(pc.is_in(final.images["image_id"], value_set=original.images["image_id"]))
    )
    new_removed = removed.filter(
        pc.invert(pc.is_in(removed["image_id"], value_set=original.images["image_id"]))
    )
    for source in dict.fromkeys([*new_images["source"].to_pylist(), *new_removed["source"].to_pylist()]):
        kept_ids = new_images.filter(pc.equal(new_images["source"], source))["image_id"]
        kept = final.annotations.filter(pc.is_in(final.annotations["image_id"], value_set=kept_ids))
        dropped = new_removed.filter(pc.equal(new_removed["source"], source))
        changes[f"+{source}"] = _images_per_class(
            kept["image_id"], kept["category_id"], categories
        ) + _removed_per_class(dropped, categories)
    for step_name in dict.fromkeys(removed["step"].to_pylist()):
        changes[f"-{step_name}"] = -_removed_per_class(
            removed.filter(pc.equal(removed["step"], step_name)), categories
        )
    return changes


def _removed_per_class(removed: pa.Table, categories: pa.ChunkedArray) -> np.ndarray:
    lists = (
        removed["category_ids"].combine_chunks() if removed.num_rows else pa.array([], pa.list_(pa.int64()))
    )
    image_ids = (
        pc.take(removed["image_id"], pc.list_parent_indices(lists))
        if len(lists)
        else pa.array([], pa.int64())
    )
    return _images_per_class(image_ids, pc.list_flatten(lists), categories)


def _images_per_class(image_ids, category_ids, categories: pa.ChunkedArray) -> np.ndarray:
    """Images per class from (image, class) pairs, an image counted once per class."""
    pairs = (
        pa.table({"image_id": image_ids, "category_id": category_ids})
        .group_by(["image_id", "category_id"])
        .aggregate([])
    )
    positions = pc.index_in(pairs["category_id"], value_set=categories).to_numpy(zero_copy_only=False)
    return np.bincount(positions, minlength=len(categories)).astype(np.int64)


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


def retrieval_summary(dataset: LabeledDataset) -> dict[str, Any]:
    """Retrieved rows in ``dataset``: how many, their mean score and, where the pool had reference
    labels, the share whose reference label names the class they were retrieved for."""
    images = dataset.images
    if "retrieval_score" not in images.column_names:
        return {"retrieved": 0, "mean_score": None, "with_reference_label": 0, "precision": None}
    retrieved = images.filter(pc.equal(images["source"], "retrieved"))
    labelled = (
        retrieved.filter(pc.is_valid(retrieved["reference_label"]))
        if "reference_label" in retrieved.column_names
        else retrieved.slice(0, 0)
    )
    names = dict(zip(dataset.categories["category_id"].to_pylist(), dataset.class_names(), strict=True))
    assigned = dict(
        zip(
            dataset.annotations["image_id"].to_pylist(),
            dataset.annotations["category_id"].to_pylist(),
            strict=False,
        )
    )
    correct = [
        _same_name(reference, names[assigned[image_id]])
        for image_id, reference in zip(
            labelled["image_id"].to_pylist(),
            labelled["reference_label"].to_pylist() if labelled.num_rows else [],
            strict=True,
        )
    ]
    return {
        "retrieved": retrieved.num_rows,
        "mean_score": pc.mean(retrieved["retrieval_score"]).as_py(),
        "with_reference_label": len(correct),
        "precision": sum(correct) / len(correct) if correct else None,
    }


def _same_name(left: str, right: str) -> bool:
    return left.replace("_", " ").casefold() == right.replace("_", " ").casefold()


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


@step("class_stats")
def class_stats(
    dataset: LabeledDataset, *, rare_max_images: PositiveInt = 10, common_max_images: PositiveInt = 100
) -> ClassStats:
    """Images and instances per class, imbalance ratio, and rare/common/frequent buckets.

    Buckets use the dataset's own LVIS ``frequency`` field when every class has one; otherwise
    they are computed from training images per class (rare ≤ rare_max_images < common ≤
    common_max_images < frequent; the pipeline-wide ``buckets`` setting fills both). Imbalance ratio = max / min images over non-empty classes.
    """
    return compute_class_stats(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
