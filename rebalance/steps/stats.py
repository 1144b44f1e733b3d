"""The ``class_stats`` step: per-class counts and rare / common / frequent buckets."""

from __future__ import annotations

from pydantic import PositiveInt

from rebalance.core.registry import step
from rebalance.domain.artifacts import ClassStats, LabeledDataset
from rebalance.domain.classes import compute_class_stats


@step("class_stats", role="describes")
def class_stats(
    dataset: LabeledDataset, *, rare_max_images: PositiveInt = 10, common_max_images: PositiveInt = 100
) -> ClassStats:
    """Images and instances per class, imbalance ratio, and rare/common/frequent buckets.

    Buckets use the dataset's own LVIS ``frequency`` field when every class has one; otherwise
    they are computed from training images per class (rare ≤ rare_max_images < common ≤
    common_max_images < frequent; the pipeline-wide ``buckets`` setting fills both). Imbalance ratio = max / min images over non-empty classes.
    """
    return compute_class_stats(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
