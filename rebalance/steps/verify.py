"""Verify that every image decodes; record sizes; move unreadable images to ``removed``."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from rebalance.core.artifacts import REMOVED_SCHEMA, LabeledDataset
from rebalance.core.registry import step
from rebalance.errors import DataError
from rebalance.io.images import probe_image


@step("verify_images", shardable=True)
def verify_images(dataset: LabeledDataset, *, on_error: Literal["drop", "fail"] = "drop") -> LabeledDataset:
    """Decode every image, fill width/height, and drop (or fail on) missing or corrupt files.

    Dropped images and their annotations leave the dataset; each is recorded in ``removed`` with
    the reason, so nothing disappears silently. Row-wise, so it runs sharded on the executor.
    """
    widths, heights, bad = [], [], []
    for image_id, file_name in zip(
        dataset.images["image_id"].to_pylist(), dataset.images["file_name"].to_pylist(), strict=False
    ):
        try:
            width, height = probe_image(dataset.image_path(file_name))
        except (OSError, ValueError) as error:
            bad.append((image_id, file_name, f"{type(error).__name__}: {error}"))
            width = height = None
        widths.append(width)
        heights.append(height)
    if bad and on_error == "fail":
        listed = "; ".join(f"{path} ({reason})" for _, path, reason in bad[:5])
        raise DataError(
            f"{len(bad)} unreadable image(s) under {dataset.image_root}: {listed}. Replace them or set on_error: drop"
        )

    images = dataset.images.set_column(
        dataset.images.schema.get_field_index("width"), "width", pa.array(widths, pa.int32())
    )
    images = images.set_column(
        images.schema.get_field_index("height"), "height", pa.array(heights, pa.int32())
    )
    bad_ids = pa.array([image_id for image_id, _, _ in bad], pa.int64())
    removed = pa.table(
        {
            "image_id": bad_ids,
            "file_name": [path for _, path, _ in bad],
            "step": ["verify_images"] * len(bad),
            "reason": [reason for _, _, reason in bad],
        },
        schema=REMOVED_SCHEMA,
    )
    return LabeledDataset(
        images=images.filter(pc.invert(pc.is_in(images["image_id"], value_set=bad_ids))),
        annotations=dataset.annotations.filter(
            pc.invert(pc.is_in(dataset.annotations["image_id"], value_set=bad_ids))
        ),
        categories=dataset.categories,
        removed=pa.concat_tables([dataset.removed, removed]),
        image_root=dataset.image_root,
    )
