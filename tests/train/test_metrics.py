from __future__ import annotations

import numpy as np
import pytest

from rebalance.train.metrics import classification_metrics


def test_hand_computed_bucket_accuracy() -> None:
    # class 0 (frequent): 4 of 4 right; class 1 (common): 1 of 2; class 2 (rare): 0 of 2; class 3 (rare): 1 of 1.
    targets = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3])
    predictions = np.array([0, 0, 0, 0, 1, 0, 0, 1, 3])
    metrics = classification_metrics(
        predictions, targets, ["a", "b", "c", "d"], ["frequent", "common", "rare", "rare"]
    )
    assert metrics["top1"] == pytest.approx(6 / 9)
    assert metrics["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert metrics["bucket_accuracy"] == pytest.approx({"rare": 0.5, "common": 0.5, "frequent": 1.0})
    assert metrics["per_class"][1] == {"class": "b", "bucket": "common", "support": 2, "accuracy": 0.5}


def test_classes_without_test_samples_are_left_out() -> None:
    metrics = classification_metrics(np.array([0, 0]), np.array([0, 0]), ["a", "b"], ["frequent", "rare"])
    assert metrics["bucket_accuracy"] == {"rare": None, "common": None, "frequent": 1.0}
    assert metrics["per_class"][1]["accuracy"] is None and metrics["mean_class_accuracy"] == 1.0
