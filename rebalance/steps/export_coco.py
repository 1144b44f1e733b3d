"""Export a ``LabeledDataset`` as COCO or LVIS v1 instances JSON, for detector trainers."""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.core.registry import step
from rebalance.domain.artifacts import IMAGES_SCHEMA, CocoExport, LabeledDataset
from rebalance.domain.classes import frequency_buckets
from rebalance.errors import DataError
from rebalance.io.coco import LVIS_IMAGE_LISTS
from rebalance.io.references import ImageRef, open_image

Format = Literal["lvis", "coco"]

# Image columns that are the entry's own COCO / LVIS keys, or too large for a JSON entry; the rest,
# `source` first, say where the row comes from.
_NOT_PROVENANCE = {*IMAGES_SCHEMA.names, "coco_url", "repeat_factor", "feature", *LVIS_IMAGE_LISTS} - {
    "source"
}
_LVIS_FREQUENCY = {"rare": "r", "common": "c", "frequent": "f"}
_EXIF_ORIENTATION = 0x0112


@step("export_coco", role="exports")
def export_coco(
    dataset: LabeledDataset,
    *,
    format: Format = "lvis",
    copy_images: bool = True,
    description: str = "Rebalanced dataset",
) -> CocoExport:
    """Write the dataset as COCO or LVIS v1 instances JSON that detectron2, mmdet, lvis-api and
    pycocotools read unmodified.

    - ``instances.json``: every image with at least one box (and every image with no label at
      all: a negative, as the input had it), all its boxed annotations (bbox, area, segmentation
      exactly as ingested, ``iscrowd`` in COCO format), its LVIS federated lists and ``coco_url``
      when known, ``repeat_factor``, and ``rebalance``: where the row comes from (``source`` and
      the columns the steps added). ``file_name`` is relative to the dataset's image root, as in
      the input file; a missing width or height is read from the image (after EXIF rotation, as
      detectron2 loads it).
    - ``image_labels.json``: images known to show a class but with no box for it (retrieved pool
      images, synthetic images, image-level labels), in the same format with no annotations and
      the classes in ``pos_category_ids`` (the field Detic's image-labelled LVIS files use).
      No box is invented: a detector trains on these only through an image-level loss, or not at
      all. With ``copy_images`` their bytes are copied to ``images/`` (a pool's tar member or a
      generated image in the cache becomes a file), and ``file_name`` is relative to the export.
    - ``repeat_factors.json``: ``image_ids`` and ``repeat_factors`` (1 where no sampling step ran)
      in image-id order, the order detectron2's loaders list images in.
    - ``export.json``: per category, images (with a box or an image-level label), images with a
      box and boxed instances; the rows no file holds (feature-space synthetic rows have no image);
      and ``notes``: what in an LVIS-format export detectron2's or mmdet's LVIS loaders reject
      (annotations without a mask or with an RLE or a polygon of fewer than 3 points, images
      without ``coco_url``), for which ``format: coco`` is the way.

    Categories keep their LVIS fields; ``image_count`` and ``instance_count`` count the images with
    a box and the boxes of ``instances.json``, and a missing ``frequency`` is LVIS's r / c / f rule
    (≤ 10, ≤ 100, more images) on those image counts.
    """
    categories = dataset.categories
    annotations = dataset.annotations
    images = dataset.images
    images = (images.drop_columns(["feature"]) if "feature" in images.column_names else images).to_pylist()
    boxed = pc.is_valid(annotations["bbox"]).to_numpy(zero_copy_only=False)
    boxes = annotations.filter(pa.array(boxed))
    labels = annotations.filter(pa.array(~boxed))
    with_boxes = set(boxes["image_id"].to_pylist())
    annotated = set(annotations["image_id"].to_pylist())
    positives: dict[int, set[int]] = {}
    for image_id, category_id in zip(
        labels["image_id"].to_pylist(), labels["category_id"].to_pylist(), strict=True
    ):
        positives.setdefault(image_id, set()).add(category_id)

    instance_images, label_images, copies, without_file = [], [], {}, []
    for row in images:
        entry = _image_entry(row, format)
        if row["image_id"] in with_boxes or row["image_id"] not in annotated:
            if row["file_name"] is not None and (entry["width"] is None or entry["height"] is None):
                _, (entry["width"], entry["height"]) = _format_and_size(
                    row, dataset.image_ref(row["file_name"])
                )
            instance_images.append(entry)
        if row["image_id"] in positives:
            if row["file_name"] is None:
                without_file.append(row["image_id"])
                continue
            entry = dict(entry, pos_category_ids=sorted(positives[row["image_id"]]))
            if copy_images:
                ref = dataset.image_ref(row["file_name"])
                extension, (entry["width"], entry["height"]) = _format_and_size(row, ref)
                copied = f"{row['image_id']:012d}.{extension}"
                entry["file_name"], copies[copied] = f"images/{copied}", ref
                entry.pop("coco_url", None)
            label_images.append(entry)

    instance_annotations = [_annotation_entry(row, format) for row in boxes.to_pylist()]
    exported = _exported_counts(categories, boxes, labels, without_file)
    category_entries = _category_entries(categories, exported, format)
    info = {"description": description, "version": "1.0"}
    documents = {
        "instances.json": _encode(
            {
                "info": info,
                "images": instance_images,
                "annotations": instance_annotations,
                "categories": category_entries,
            }
        )
    }
    if label_images:
        documents["image_labels.json"] = _encode(
            {"info": info, "images": label_images, "annotations": [], "categories": category_entries}
        )
    factors = sorted(
        {entry["id"]: entry["repeat_factor"] for entry in instance_images + label_images}.items()
    )
    documents["repeat_factors.json"] = _encode(
        {"image_ids": [i for i, _ in factors], "repeat_factors": [f for _, f in factors]}
    )
    documents["export.json"] = json.dumps(
        {
            "format": format,
            "images": len(factors),
            "instance_images": len(instance_images),
            "image_label_images": len(label_images),
            "annotations": len(instance_annotations),
            "image_root": dataset.image_root,
            "rows_without_image": without_file,
            "notes": _lvis_loader_notes(instance_images, boxes) if format == "lvis" else [],
            "per_category": exported,
        },
        indent=2,
    ).encode()
    return CocoExport(documents, copies)


def _image_entry(row: dict[str, Any], format: Format) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": row["image_id"], "file_name": row["file_name"]}
    if row.get("coco_url"):
        entry["coco_url"] = row["coco_url"]
    entry["width"], entry["height"] = row["width"], row["height"]
    if format == "lvis":  # LVIS's evaluation reads both lists on every image
        for name in LVIS_IMAGE_LISTS:
            entry[name] = row.get(name) or []
    factor = row.get("repeat_factor")
    entry["repeat_factor"] = 1.0 if factor is None else float(factor)
    entry["rebalance"] = {
        name: value for name, value in row.items() if name not in _NOT_PROVENANCE and value is not None
    }
    return entry


def _format_and_size(row: dict[str, Any], ref: ImageRef) -> tuple[str, tuple[int, int]]:
    """The image's file extension (from its format) and its width and height as detectron2 loads
    it: after EXIF rotation, which swaps the two for orientations 5 to 8. Reads the header only."""
    try:
        with open_image(ref) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            extension = (image.format or "png").lower().replace("jpeg", "jpg")
    except Exception as error:  # PIL raises several types for unreadable data
        raise DataError(
            f"image {row['image_id']} ({row['file_name']}) cannot be read for the export: {error}; "
            "run verify_images before it, or fix the file"
        ) from None
    return extension, (width, height)


def _annotation_entry(row: dict[str, Any], format: Format) -> dict[str, Any]:
    x, y, width, height = row["bbox"]
    entry: dict[str, Any] = {
        "id": row["annotation_id"],
        "image_id": row["image_id"],
        "category_id": row["category_id"],
        "bbox": row["bbox"],
        # The file's own area (a mask's); COCO's evaluation needs one, so a missing one is the box's.
        "area": row["area"] if row["area"] is not None else width * height,
    }
    if row.get("segmentation") is not None:
        # The mask's JSON as ingested, written byte for byte.
        entry["segmentation"] = msgspec.Raw(row["segmentation"].encode())
    if format == "coco":
        entry["iscrowd"] = row.get("iscrowd") or 0
    return entry


def _exported_counts(
    categories: pa.Table, boxes: pa.Table, labels: pa.Table, without_file: list[int]
) -> dict[str, dict[str, int]]:
    """Per category name: images in the files (with a box or an image-level label), images with a
    box, and boxed instances."""
    labels = labels.filter(pc.invert(pc.is_in(labels["image_id"], pa.array(without_file, pa.int64()))))

    def images_per_category(table: pa.Table) -> np.ndarray:
        pairs = table.select(["image_id", "category_id"]).group_by(["image_id", "category_id"]).aggregate([])
        return per_category(pairs["category_id"])

    def per_category(category_ids: pa.ChunkedArray) -> np.ndarray:
        positions = pc.index_in(category_ids, value_set=categories["category_id"]).to_numpy(
            zero_copy_only=False
        )
        return np.bincount(positions.astype(np.int64), minlength=categories.num_rows)

    images = images_per_category(pa.concat_tables([boxes, labels]))
    box_images, instances = images_per_category(boxes), per_category(boxes["category_id"])
    return {
        name: {"images": int(i), "box_images": int(b), "instances": int(n)}
        for name, i, b, n in zip(categories["name"].to_pylist(), images, box_images, instances, strict=True)
    }


def _lvis_loader_notes(instance_images: list[dict[str, Any]], boxes: pa.Table) -> list[str]:
    """What detectron2's ``load_lvis_json`` (which asserts polygons of 3 points or more and reads
    every image's ``coco_url``) or mmdet's ``LVISV1Dataset`` would reject in this export."""
    notes = []
    no_url = [entry["id"] for entry in instance_images if "coco_url" not in entry]
    if no_url:
        notes.append(f"{len(no_url)} image(s) without coco_url (first ids: {no_url[:5]})")
    masks = (
        boxes["segmentation"].to_pylist() if "segmentation" in boxes.column_names else [None] * boxes.num_rows
    )
    kinds: dict[str, list[int]] = {}
    for annotation_id, mask in zip(boxes["annotation_id"].to_pylist(), masks, strict=True):
        if mask is None:
            kinds.setdefault("without a mask", []).append(annotation_id)
        elif mask.lstrip().startswith("{"):
            kinds.setdefault("with an RLE mask", []).append(annotation_id)
        elif any(len(polygon) < 6 for polygon in json.loads(mask)):
            kinds.setdefault("with a polygon of fewer than 3 points", []).append(annotation_id)
    notes += [f"{len(ids)} annotation(s) {kind} (first ids: {ids[:5]})" for kind, ids in kinds.items()]
    if notes:
        notes.append(
            "detectron2's and mmdet's LVIS loaders reject these; export with format: coco and load it "
            "with register_coco_instances / CocoDataset"
        )
    return notes


def _category_entries(
    categories: pa.Table, exported: dict[str, dict[str, int]], format: Format
) -> list[dict[str, Any]]:
    counts = [exported[name] for name in categories["name"].to_pylist()]
    computed = frequency_buckets(np.array([c["box_images"] for c in counts]), 10, 100)
    entries = []
    for row, count, bucket in zip(categories.to_pylist(), counts, computed, strict=True):
        entry: dict[str, Any] = {"id": row["category_id"], "name": row["name"]}
        if format == "lvis":
            entry |= {
                "synonyms": row["synonyms"] or [row["name"]],
                "def": row["definition"] or "",
                "synset": row["synset"] or "",
                "frequency": row["frequency"] or _LVIS_FREQUENCY[bucket],
                "image_count": count["box_images"],
                "instance_count": count["instances"],
            }
        entries.append(entry)
    return entries


def _encode(document: dict[str, Any]) -> bytes:
    # msgspec writes the masks' Raw JSON verbatim, which the json module cannot.
    return msgspec.json.encode(document)
