"""Read COCO / LVIS instance annotation JSON into the internal tables."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from rebalance.core.artifacts import ANNOTATIONS_SCHEMA, CATEGORIES_SCHEMA, IMAGES_SCHEMA
from rebalance.errors import DataError

# LVIS per-image lists for federated evaluation, kept when present.
_LVIS_IMAGE_LISTS = ("neg_category_ids", "not_exhaustive_category_ids")


def read_coco(path: Path, split: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Parse a COCO or LVIS v1 instances file.

    LVIS category fields ``synonyms``, ``def``, ``synset``, ``frequency``, ``image_count`` and
    ``instance_count`` are kept when present. LVIS images have no ``file_name``: it is taken from
    the last two parts of ``coco_url`` (``train2017/000000391895.jpg``), as detectron2 does.

    Returns:
        ``(images, annotations, categories)`` tables, images sorted by id and annotations by
        (image id, annotation id).

    Raises:
        DataError: malformed JSON, missing sections, duplicate ids, or annotations that reference
        unknown image or category ids.
    """
    try:
        payload = json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(payload.get(k), list)]
    if missing:
        raise DataError(
            f"{path}: missing or invalid section(s) {missing}; is this a COCO/LVIS instances file?"
        )

    categories = _categories(path, payload["categories"])
    images = _images(path, payload["images"], split)
    annotations = _annotations(
        path,
        payload["annotations"],
        set(images["image_id"].to_pylist()),
        set(categories["category_id"].to_pylist()),
    )
    return images, annotations, categories


def _require(path: Path, section: str, row: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(row, dict) or any(k not in row for k in keys):
        raise DataError(f"{path}: an entry of '{section}' lacks {list(keys)}: {str(row)[:200]}")


def _unique(path: Path, section: str, ids: list[int]) -> None:
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise DataError(f"{path}: duplicate id(s) {sorted(duplicates)[:5]} in '{section}'")


def _categories(path: Path, rows: list[Any]) -> pa.Table:
    for row in rows:
        _require(path, "categories", row, ("id", "name"))
    rows = sorted(rows, key=lambda r: r["id"])
    _unique(path, "categories", [r["id"] for r in rows])
    return pa.table(
        {
            "category_id": [r["id"] for r in rows],
            "name": [r["name"] for r in rows],
            "synonyms": [r.get("synonyms") for r in rows],
            "definition": [r.get("def") for r in rows],
            "synset": [r.get("synset") for r in rows],
            "frequency": [r.get("frequency") for r in rows],
            "image_count": [r.get("image_count") for r in rows],
            "instance_count": [r.get("instance_count") for r in rows],
        },
        schema=CATEGORIES_SCHEMA,
    )


def _file_name(path: Path, row: dict[str, Any]) -> str:
    if row.get("file_name"):
        return str(row["file_name"])
    if row.get("coco_url"):
        return "/".join(str(row["coco_url"]).split("/")[-2:])
    raise DataError(f"{path}: image {row['id']} has neither file_name nor coco_url")


def _images(path: Path, rows: list[Any], split: str) -> pa.Table:
    for row in rows:
        _require(path, "images", row, ("id",))
    rows = sorted(rows, key=lambda r: r["id"])
    _unique(path, "images", [r["id"] for r in rows])
    columns: dict[str, list[Any]] = {
        "image_id": [r["id"] for r in rows],
        "file_name": [_file_name(path, r) for r in rows],
        "split": [split] * len(rows),
        "width": [r.get("width") for r in rows],
        "height": [r.get("height") for r in rows],
        "source": ["original"] * len(rows),
    }
    schema = IMAGES_SCHEMA
    for extra in _LVIS_IMAGE_LISTS:
        if any(extra in r for r in rows):
            columns[extra] = [r.get(extra, []) for r in rows]
            schema = schema.append(pa.field(extra, pa.list_(pa.int64())))
    return pa.table(columns, schema=schema)


def _annotations(path: Path, rows: list[Any], image_ids: set[int], category_ids: set[int]) -> pa.Table:
    for row in rows:
        _require(path, "annotations", row, ("id", "image_id", "category_id"))
    rows = sorted(rows, key=lambda r: (r["image_id"], r["id"]))
    _unique(path, "annotations", [r["id"] for r in rows])
    for field, known, section in (
        ("image_id", image_ids, "images"),
        ("category_id", category_ids, "categories"),
    ):
        unknown = {r[field] for r in rows} - known
        if unknown:
            bad = sum(1 for r in rows if r[field] in unknown)
            raise DataError(
                f"{path}: {bad} annotation(s) reference {len(unknown)} {field}(s) missing from "
                f"'{section}' (first: {sorted(unknown)[:5]}); fix the file or remove those annotations"
            )
    return pa.table(
        {
            "annotation_id": [r["id"] for r in rows],
            "image_id": [r["image_id"] for r in rows],
            "category_id": [r["category_id"] for r in rows],
            "bbox": [r.get("bbox") for r in rows],
            "area": [r.get("area") for r in rows],
        },
        schema=ANNOTATIONS_SCHEMA,
    )


def read_coco_captions(path: Path, image_ids: list[int]) -> pa.Array:
    """A COCO captions file (``captions_train2017.json``: ``annotations`` of ``image_id`` and
    ``caption``) as one string per image of ``image_ids``, its captions one per line in annotation
    order (null for an image without one). A caption for an image not in ``image_ids`` is an error
    naming the annotation."""
    try:
        payload = json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("annotations"), list):
        raise DataError(f"{path}: expected a COCO captions file: an object with an 'annotations' list")
    known = set(image_ids)
    lines: dict[int, list[str]] = {}
    for row in payload["annotations"]:
        _require(path, "annotations", row, ("image_id", "caption"))
        if row["image_id"] not in known:
            raise DataError(
                f"{path}: caption annotation {row.get('id', '?')} is for image {row['image_id']}, "
                "which the instances file does not list; are these captions for another split?"
            )
        lines.setdefault(row["image_id"], []).append(" ".join(str(row["caption"]).split()))
    return pa.array(["\n".join(lines[i]) if i in lines else None for i in image_ids], pa.string())
