"""Ingest steps: read a dataset from disk into a ``LabeledDataset``."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pyarrow as pa
from pydantic import PositiveInt

from rebalance.core.registry import InputPath, step
from rebalance.domain.artifacts import (
    REMOVED_SCHEMA,
    LabeledDataset,
)
from rebalance.errors import DataError
from rebalance.io.coco import read_coco, read_coco_captions
from rebalance.io.image_folder import IMAGE_EXTENSIONS, scan_image_folder, scan_pool_folder
from rebalance.io.parquet_images import scan_parquet_images
from rebalance.io.tables import read_side_table
from rebalance.io.webdataset import IMAGE_SUFFIXES, scan_webdataset


@step("ingest_image_folder", role="reads")
def ingest_image_folder(
    *,
    root: InputPath,
    split: str = "train",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    max_images_per_class: PositiveInt | None = None,
    captions: InputPath | None = None,
    caption_column: str = "caption",
) -> LabeledDataset:
    """Read a classification dataset laid out as root/<class>/<image>.

    Classes are the sub-folder names in sorted order (category ids 0..C-1); images are numbered in
    sorted path order. ``max_images_per_class`` keeps the first N images of each class by path, a
    deterministic subset for smoke tests. ``captions`` (CSV / JSON lines / parquet with
    ``file_name``, relative to root, and ``caption_column``) attaches each image's ``caption``.
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
    dataset = LabeledDataset.classification(
        [path for path, _ in files],
        [label for _, label in files],
        class_names,
        split=split,
        image_root=str(root),
    )
    if captions is None:
        return dataset
    names = dataset.images["file_name"].to_pylist()
    return dataclasses.replace(
        dataset, images=dataset.images.append_column("caption", _by_file(captions, caption_column, names))
    )


@step("ingest_coco", role="reads")
def ingest_coco(
    *,
    annotations: InputPath,
    image_root: InputPath,
    split: str = "train",
    captions: InputPath | None = None,
) -> LabeledDataset:
    """Read a COCO or LVIS v1 instances JSON; image paths are relative to image_root.

    LVIS category metadata (synonyms, def, synset, frequency, image_count, instance_count) is
    kept. Malformed JSON and annotations pointing at unknown image or category ids are errors
    that name the file. ``captions`` (a COCO captions JSON such as ``captions_train2017.json``)
    attaches each image's ``caption``: its captions, one per line.
    """
    images, instances, categories = read_coco(annotations, split)
    if captions is not None:
        images = images.append_column("caption", read_coco_captions(captions, images["image_id"].to_pylist()))
    return LabeledDataset(images, instances, categories, REMOVED_SCHEMA.empty_table(), str(image_root))


@step("ingest_pool", role="reads")
def ingest_pool(
    *,
    root: InputPath,
    captions: InputPath | None = None,
    caption_column: str = "caption",
    reference_labels: InputPath | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> LabeledDataset:
    """Read an unlabelled retrieval pool: every image under ``root`` (recursively, sorted by path).

    ``captions`` (CSV / JSON lines / parquet with ``file_name`` and ``caption_column``) attaches a
    ``caption`` to each image, for text retrieval. ``reference_labels`` (``file_name``, ``label``)
    attaches the pool's true class as ``reference_label``: retrieval never reads it, the report
    uses it to measure retrieval precision. The pool has no annotations.
    """
    files = scan_pool_folder(root, extensions)
    dataset = LabeledDataset.unlabeled(files, split="pool", source="pool", image_root=str(root))
    images = dataset.images
    if captions is not None:
        images = images.append_column("caption", _by_file(captions, caption_column, files))
    if reference_labels is not None:
        images = images.append_column("reference_label", _by_file(reference_labels, "label", files))
    return dataclasses.replace(dataset, images=images)


@step("ingest_webdataset", role="reads")
def ingest_webdataset(
    *,
    root: InputPath,
    reference_labels: InputPath | None = None,
    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
    metadata_columns: tuple[str, ...] = (),
) -> LabeledDataset:
    """Read an unlabelled retrieval pool of WebDataset tar shards (img2dataset's output), streamed.

    One row a sample with an image: ``file_name`` references the member's bytes inside its shard
    (nothing is unpacked), ``key``, and ``caption`` / ``url`` from ``<key>.txt``, ``<key>.json`` or
    the ``<shard>.parquet`` beside it. ``reference_labels`` (``key``, ``label``) attaches the
    pool's true class as ``reference_label``, for measuring retrieval precision only.
    ``metadata_columns``: more columns to keep from each sample's JSON or the shard's parquet
    (e.g. ``retrieval_key``, which ``add_caption_retrievals`` joins downloads back by).
    """
    samples = scan_webdataset(root, image_suffixes, metadata_columns)
    dataset = LabeledDataset.unlabeled(
        samples["file_name"], split="pool", source="pool", image_root=str(root)
    )
    images = dataset.images
    for name in ("key", "caption", "url", *metadata_columns):
        images = images.append_column(name, samples[name])
    if reference_labels is not None:
        keys = samples["key"].to_pylist()
        images = images.append_column("reference_label", _by_file(reference_labels, "label", keys, by="key"))
    return dataclasses.replace(dataset, images=images)


@step("ingest_parquet_pool", role="reads")
def ingest_parquet_pool(
    *,
    root: InputPath,
    image_column: str = "image",
    caption_column: str | None = None,
    key_column: str | None = None,
    reference_labels: InputPath | None = None,
) -> LabeledDataset:
    """Read an unlabelled retrieval pool of parquet files whose ``image_column`` holds the image bytes
    (a binary column, or a Hugging Face ``Image`` struct), e.g. a ``datasets`` export.

    One row per parquet row; ``file_name`` references the cell (``<file>#<row group>/<row>:<column>``)
    and only the files' metadata and the caption / key columns are read here: pixel readers fetch a
    row group's images when they need them. ``reference_labels`` (``key``, ``label``) scores retrieval.
    """
    samples = scan_parquet_images(root, image_column, caption_column, key_column)
    dataset = LabeledDataset.unlabeled(
        samples["file_name"].to_pylist(),
        split="pool",
        source="pool",
        image_root=str(root.parent if root.is_file() else root),
    )
    images = dataset.images
    for name in ("key", "caption"):
        images = images.append_column(name, samples[name])
    if reference_labels is not None:
        keys = samples["key"].to_pylist()
        images = images.append_column("reference_label", _by_file(reference_labels, "label", keys, by="key"))
    return dataclasses.replace(dataset, images=images)


def _by_file(path, column: str, files: list[str], by: str = "file_name") -> pa.Array:
    table = read_side_table(path, (by, column))
    values = dict(
        zip(table[by].cast(pa.string()).to_pylist(), table[column].cast(pa.string()).to_pylist(), strict=True)
    )
    unknown = sorted(set(values) - set(files))
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} {by} value(s) match no image of the dataset (first: {unknown[:3]}); "
            f"{by} must be as the dataset names its images (e.g. {files[0] if files else '-'!r})"
        )
    return pa.array([values.get(name) for name in files], pa.string())
