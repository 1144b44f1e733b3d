"""Verify that every image decodes; record sizes; move unreadable images to ``removed``."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pyarrow as pa

from rebalance.core.registry import step
from rebalance.domain.artifacts import LabeledDataset
from rebalance.errors import DataError
from rebalance.io.images import probe_image


@step("verify_images", shardable=True, role="checks")
def verify_images(dataset: LabeledDataset, *, on_error: Literal["drop", "fail"] = "drop") -> LabeledDataset:
    """Decode every image, fill width/height, and drop (or fail on) missing or corrupt files.

    Dropped images and their annotations leave the dataset; each is recorded in ``removed`` with
    the reason, so nothing disappears silently. Row-wise, so it runs sharded on the executor.
    """
    widths, heights, bad = [], [], []
    for file_name in dataset.images["file_name"].to_pylist():
        try:
            width, height = probe_image(dataset.image_ref(file_name))
        except (OSError, ValueError) as error:
            bad.append((file_name, f"{type(error).__name__}: {error}"))
            width = height = None
        widths.append(width)
        heights.append(height)
    if bad and on_error == "fail":
        listed = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
        raise DataError(
            f"{len(bad)} unreadable image(s) under {dataset.image_root}: {listed}. Replace them or set on_error: drop"
        )
    images = dataset.images.set_column(
        dataset.images.schema.get_field_index("width"), "width", pa.array(widths, pa.int32())
    )
    images = images.set_column(
        images.schema.get_field_index("height"), "height", pa.array(heights, pa.int32())
    )
    unreadable = np.array([width is None for width in widths], dtype=bool)
    checked = dataclasses.replace(dataset, images=images)
    return checked.drop(unreadable, "verify_images", [reason for _, reason in bad])
