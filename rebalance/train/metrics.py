"""Classification metrics per frequency bucket.

Bucket accuracy is the mean of the per-class accuracies of the bucket's classes (the
many/medium/few-shot convention of OLTR, Liu et al., CVPR 2019), so a test set that is itself
imbalanced does not tilt it. All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rebalance.domain.classes import BUCKETS


def multilabel_metrics(
    scores: np.ndarray, targets: np.ndarray, class_names: list[str], buckets: list[str]
) -> dict[str, Any]:
    """Average precision per class (scikit-learn), its mean per bucket and overall (mAP).

    For multi-label data such as LVIS images, where top-1 accuracy is undefined; a class without
    positive test images has no AP and is left out of the means. Keys mirror
    ``classification_metrics`` with ``metric: average_precision``: the bucket values are APs.
    """
    from sklearn.metrics import average_precision_score

    support = targets.sum(axis=0).astype(int)
    per_class = np.array(
        [
            average_precision_score(targets[:, c], scores[:, c]) if support[c] else np.nan
            for c in range(len(class_names))
        ]
    )
    return {
        "metric": "average_precision",
        "top1": None,
        **_summary("average_precision", per_class, support, class_names, buckets),
    }


def classification_metrics(
    predictions: np.ndarray, targets: np.ndarray, class_names: list[str], buckets: list[str]
) -> dict[str, Any]:
    """Top-1, mean per-class accuracy, accuracy per bucket and a per-class table."""
    num_classes = len(class_names)
    support = np.bincount(targets, minlength=num_classes)
    correct = np.bincount(targets[predictions == targets], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    top1 = float(correct.sum() / max(support.sum(), 1))
    return {
        "metric": "accuracy",
        "top1": top1,
        **_summary("accuracy", per_class, support, class_names, buckets),
    }


def _summary(
    metric: str, per_class: np.ndarray, support: np.ndarray, class_names: list[str], buckets: list[str]
) -> dict[str, Any]:
    """Mean over classes, mean per bucket, and the per-class table of one per-class ``metric``."""
    return {
        "mean_class_accuracy": float(np.nanmean(per_class)) if (support > 0).any() else None,
        "bucket_accuracy": _bucket_means(per_class, support, buckets),
        "per_class": [
            {
                "class": name,
                "bucket": bucket,
                "support": int(n),
                metric: None if np.isnan(value) else float(value),
            }
            for name, bucket, n, value in zip(class_names, buckets, support, per_class, strict=True)
        ],
    }


def _bucket_means(per_class: np.ndarray, support: np.ndarray, buckets: list[str]) -> dict[str, float | None]:
    """The mean of each bucket's per-class values, over classes with test samples."""
    bucket_array = np.asarray(buckets)
    means = {}
    for bucket in BUCKETS:
        values = per_class[(bucket_array == bucket) & (support > 0)]
        means[bucket] = float(values.mean()) if len(values) else None
    return means
