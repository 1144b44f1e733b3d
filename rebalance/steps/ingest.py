"""Ingest steps: read a dataset from disk into a ``LabeledDataset``."""

from __future__ import annotations

from collections import Counter

from pydantic import PositiveInt

from rebalance.core.artifacts import (
    REMOVED_SCHEMA,
    LabeledDataset,
)
from rebalance.core.registry import InputPath, step
from rebalance.io.coco import read_coco
from rebalance.io.image_folder import IMAGE_EXTENSIONS, scan_image_folder


@step("ingest_image_folder")
def ingest_image_folder(
    *,
    root: InputPath,
    split: str = "train",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    max_images_per_class: PositiveInt | None = None,
) -> LabeledDataset:
    """Read a classification dataset laid out as root/<class>/<image>.

    Classes are the sub-folder names in sorted order (category ids 0..C-1); images are numbered in
    sorted path order. ``max_images_per_class`` keeps the first N images of each class by path, a
    deterministic subset for smoke tests.
    """
    class_names, files = scan_image_folder(root, extensions)
    if max_images_per_class is not None:
        per_class: Counter[int] = Counter()
        subset = []
        for path, label in files:
            if per_class[label] < max_images_per_class:
                per_class[label] += 1
                subset.append((path, label))
        files = subset
    return LabeledDataset.classification(
        [path for path, _ in files],
        [label for _, label in files],
        class_names,
        split=split,
        image_root=str(root),
    )


@step("ingest_coco")
def ingest_coco(
    *,
    annotations: InputPath,
    image_root: InputPath,
    split: str = "train",
) -> LabeledDataset:
    """Read a COCO or LVIS v1 instances JSON; image paths are relative to image_root.

    LVIS category metadata (synonyms, def, synset, frequency, image_count, instance_count) is
    kept. Malformed JSON and annotations pointing at unknown image or category ids are errors
    that name the file.
    """
    images, instances, categories = read_coco(annotations, split)
    return LabeledDataset(images, instances, categories, REMOVED_SCHEMA.empty_table(), str(image_root))
