"""Read COCO / LVIS instance annotation JSON into the internal tables.

Why msgspec: LVIS v1 train is 423 MB with 1.27M annotations. ``json.loads`` builds a dict per
annotation and a Python float per polygon coordinate (tens of millions), which is most of both the
time and the memory. msgspec decodes straight into the typed structs below, validating as it goes,
skips the keys they do not name, and keeps each ``segmentation`` as ``msgspec.Raw``: its JSON bytes.
The tables are then built from columns, and ids are checked with numpy.

Masks are stored as those bytes (the ``segmentation`` column, JSON text), so an annotation no step
touches is written back out byte for byte. Each one is still decoded once, on its own, to check it
(odd polygon coordinates, an RLE whose size is not its image's), and the coordinates dropped again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np
import pyarrow as pa

from rebalance.errors import DataError
from rebalance.io.schemas import ANNOTATIONS_SCHEMA, CATEGORIES_SCHEMA, IMAGES_SCHEMA

# LVIS per-image lists for federated evaluation, kept when present.
LVIS_IMAGE_LISTS = ("neg_category_ids", "not_exhaustive_category_ids")

# The ranges of the tables' integer columns: a value outside is an error naming the entry.
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


# gc=False: these structs hold no reference cycles, and a million GC-tracked objects would make the
# collector rescan them over and over while they are decoded.
class _Category(msgspec.Struct, gc=False):
    id: _Int64
    name: str
    synonyms: list[str] | None = None
    definition: str | None = msgspec.field(default=None, name="def")
    synset: str | None = None
    frequency: str | None = None
    image_count: _Int64 | None = None
    instance_count: _Int64 | None = None


class _Image(msgspec.Struct, gc=False):
    id: _Int64
    file_name: str | None = None
    coco_url: str | None = None
    width: _Int32 | None = None
    height: _Int32 | None = None
    # UNSET when the key is absent: the column exists only when some image has the key.
    neg_category_ids: list[_Int64] | None | msgspec.UnsetType = msgspec.UNSET
    not_exhaustive_category_ids: list[_Int64] | None | msgspec.UnsetType = msgspec.UNSET


class _Annotation(msgspec.Struct, gc=False):
    id: _Int64
    image_id: _Int64
    category_id: _Int64
    bbox: list[float] | None = None
    area: float | None = None
    iscrowd: _Int32 | None | msgspec.UnsetType = msgspec.UNSET
    # The polygons or RLE as they are in the file; an empty Raw when the key is absent.
    segmentation: msgspec.Raw = msgspec.Raw()


class _RLE(msgspec.Struct, gc=False):
    size: list[_Int64]
    counts: str | list[_Int64]


# A mask as COCO defines it: polygons (flat [x1, y1, x2, y2, ...] lists) or run-length encoding.
_MASK = msgspec.json.Decoder(list[list[float]] | _RLE)


class _Caption(msgspec.Struct, gc=False):
    image_id: _Int64
    caption: str
    id: Any = "?"


# Per entry type: its section's required keys and what one entry is called in messages.
_Entry = TypeVar("_Entry", _Category, _Image, _Annotation, _Caption)
_REQUIRED: dict[type, tuple[tuple[str, ...], str]] = {
    _Category: (("id", "name"), "category"),
    _Image: (("id",), "image"),
    _Annotation: (("id", "image_id", "category_id"), "annotation"),
    _Caption: (("image_id", "caption"), "caption annotation"),
}


def read_coco(path: Path, split: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Parse a COCO or LVIS v1 instances file.

    LVIS category fields ``synonyms``, ``def``, ``synset``, ``frequency``, ``image_count`` and
    ``instance_count`` are kept when present. LVIS images have no ``file_name``: it is taken from
    the last two parts of ``coco_url`` (``train2017/000000391895.jpg``), as detectron2 does.

    Returns:
        ``(images, annotations, categories)`` tables, images sorted by id and annotations by
        (image id, annotation id).

    Raises:
        DataError: malformed JSON, missing sections, entries that lack a required key or hold a
        value of the wrong type (naming the section, the entry and its id), duplicate ids,
        annotations that reference unknown image or category ids, or a malformed mask (naming the
        annotation id): a polygon with an odd number of coordinates, an RLE whose ``size`` is not
        its image's [height, width] or whose counts do not cover it.
    """
    data = path.read_bytes()
    sections = _sections(path, data, "expected a JSON object with images, annotations and categories")
    missing = [k for k in ("images", "annotations", "categories") if not _is_list(sections.get(k))]
    if missing:
        raise DataError(
            f"{path}: missing or invalid section(s) {missing}; is this a COCO/LVIS instances file?"
        )
    categories = _categories(path, _decode(path, data, sections, "categories", _Category))
    images = _images(path, _decode(path, data, sections, "images", _Image), split)
    annotations = _annotations(
        path,
        _decode(path, data, sections, "annotations", _Annotation),
        images,
        categories["category_id"].to_numpy(),
    )
    return images, annotations, categories


def _sections(path: Path, data: bytes, not_an_object: str) -> dict[str, msgspec.Raw]:
    """The top-level object's values as undecoded JSON. Checks the syntax of the whole file."""
    try:
        return msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except msgspec.ValidationError:
        raise DataError(f"{path}: {not_an_object}") from None
    except msgspec.DecodeError as error:
        raise _malformed(path, data, error, 0) from None


def _is_list(raw: msgspec.Raw | None) -> bool:
    return raw is not None and memoryview(raw)[:1] == b"["


def _decode(
    path: Path, data: bytes, sections: dict[str, msgspec.Raw], section: str, entry: type[_Entry]
) -> list[_Entry]:
    raw = sections[section]
    try:
        return msgspec.json.decode(raw, type=list[entry])
    except msgspec.ValidationError as error:
        raise _invalid(path, raw, section, entry, str(error)) from None
    except msgspec.DecodeError as error:  # e.g. invalid UTF-8 in a string, which the first pass skips
        raise _malformed(path, data, error, _offset(raw, data)) from None


def _offset(raw: msgspec.Raw, data: bytes) -> int:
    """Where ``raw`` starts in ``data``: a Raw decoded from bytes is a view of them."""
    offset = np.frombuffer(raw, np.uint8).ctypes.data - np.frombuffer(data, np.uint8).ctypes.data
    return offset if 0 <= offset <= len(data) else 0


def _malformed(path: Path, data: bytes, error: msgspec.DecodeError, offset: int) -> DataError:
    """The decoder's message with the byte it names as a line and column (1-based, in characters).

    ``offset``: where the bytes that were being decoded start in ``data``.
    """
    message = str(error).removeprefix("JSON is malformed: ")
    found = re.search(r"\s*\(byte (\d+)\)$", message)
    if found:
        position, message = offset + int(found[1]), message[: found.start()]
    elif "truncated" in message:  # "Input data was truncated": the end of the file
        position = len(data)
    else:  # "Invalid UTF-8 encoded string" names no byte: find the first invalid one
        try:
            data.decode("utf-8")
            position = len(data)
        except UnicodeDecodeError as invalid:
            position = invalid.start
    line_start = data.rfind(b"\n", 0, position) + 1
    column = len(data[line_start:position].decode("utf-8", "replace")) + 1
    line = data.count(b"\n", 0, position) + 1
    return DataError(f"{path}: malformed JSON at line {line}, column {column}: {message}")


def _invalid(path: Path, raw: msgspec.Raw, section: str, entry: type, message: str) -> DataError:
    """A DataError for msgspec's ``<reason> - at `$[i].key```: the section, entry, its id and key."""
    keys, noun = _REQUIRED[entry]
    found = re.fullmatch(r"(.*) - at `\$\[(\d+)\](.*)`", message, flags=re.DOTALL)
    if found is None:  # not about one entry; no such message is known, but say what msgspec said
        return DataError(f"{path}: invalid '{section}': {message}")
    reason, index, key = found[1], int(found[2]), found[3]
    # Decoded again, generically, only on this error path: the entry as it is in the file.
    row = msgspec.json.decode(msgspec.json.decode(raw, type=list[msgspec.Raw])[index])
    where = f"at $.{section}[{index}]{key}"
    if isinstance(row, dict) and "id" in row:
        where += f", {noun} id {row['id']!r}"
    if not key and (
        reason.startswith("Object missing required field") or reason.startswith("Expected `object`")
    ):
        return DataError(
            f"{path}: an entry of '{section}' lacks {list(keys)} ({reason} {where}): {str(row)[:200]}"
        )
    return DataError(f"{path}: invalid value in '{section}' ({where}): {reason}")


def _check_unique(path: Path, section: str, sorted_ids: np.ndarray) -> None:
    repeated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if len(repeated):
        raise DataError(f"{path}: duplicate id(s) {np.unique(repeated)[:5].tolist()} in '{section}'")


def _sorted_by_id(path: Path, section: str, rows: list[_Entry]) -> list[_Entry]:
    ids = np.fromiter((r.id for r in rows), np.int64, len(rows))
    order = np.argsort(ids, kind="stable")
    _check_unique(path, section, ids[order])
    return [rows[i] for i in order.tolist()]


def _categories(path: Path, rows: list[_Category]) -> pa.Table:
    rows = _sorted_by_id(path, "categories", rows)
    return pa.table(
        {
            "category_id": [r.id for r in rows],
            "name": [r.name for r in rows],
            "synonyms": [r.synonyms for r in rows],
            "definition": [r.definition for r in rows],
            "synset": [r.synset for r in rows],
            "frequency": [r.frequency for r in rows],
            "image_count": [r.image_count for r in rows],
            "instance_count": [r.instance_count for r in rows],
        },
        schema=CATEGORIES_SCHEMA,
    )


def _file_name(path: Path, row: _Image) -> str:
    if row.file_name:
        return row.file_name
    if row.coco_url:
        return "/".join(row.coco_url.split("/")[-2:])
    raise DataError(f"{path}: image {row.id} has neither file_name nor coco_url")


def _images(path: Path, rows: list[_Image], split: str) -> pa.Table:
    rows = _sorted_by_id(path, "images", rows)
    columns: dict[str, Any] = {
        "image_id": [r.id for r in rows],
        "file_name": [_file_name(path, r) for r in rows],
        "split": pa.repeat(pa.scalar(split, pa.string()), len(rows)),
        "width": [r.width for r in rows],
        "height": [r.height for r in rows],
        "source": pa.repeat(pa.scalar("original", pa.string()), len(rows)),
    }
    schema = IMAGES_SCHEMA
    if any(r.coco_url for r in rows):  # detectron2's LVIS loader finds the file by it
        columns["coco_url"] = [r.coco_url for r in rows]
        schema = schema.append(pa.field("coco_url", pa.string()))
    for extra in LVIS_IMAGE_LISTS:
        values = [getattr(r, extra) for r in rows]
        if any(v is not msgspec.UNSET for v in values):
            columns[extra] = [[] if v is msgspec.UNSET else v for v in values]
            schema = schema.append(pa.field(extra, pa.list_(pa.int64())))
    return pa.table(columns, schema=schema)


def _annotations(path: Path, rows: list[_Annotation], images: pa.Table, category_ids: np.ndarray) -> pa.Table:
    """``images``: the images table (sorted by id); ``category_ids``: the known ids, sorted and unique."""
    count = len(rows)
    annotation_id = np.fromiter((r.id for r in rows), np.int64, count)
    image_id = np.fromiter((r.image_id for r in rows), np.int64, count)
    category_id = np.fromiter((r.category_id for r in rows), np.int64, count)
    order = np.lexsort((annotation_id, image_id))
    _check_unique(path, "annotations", np.sort(annotation_id))
    image_ids = images["image_id"].to_numpy()
    for field, values, known, section in (
        ("image_id", image_id, image_ids, "images"),
        ("category_id", category_id, category_ids, "categories"),
    ):
        bad = ~np.isin(values, known)
        if bad.any():
            unknown = np.unique(values[bad])
            first = int(np.argmax(bad))
            raise DataError(
                f"{path}: {int(bad.sum())} annotation(s) reference {len(unknown)} {field}(s) missing from "
                f"'{section}' (first: {unknown[:5].tolist()}; annotation {annotation_id[first]} has "
                f"{field} {values[first]}); fix the file or remove those annotations"
            )
    take = pa.array(order)
    columns: dict[str, Any] = {
        "annotation_id": annotation_id[order],
        "image_id": image_id[order],
        "category_id": category_id[order],
        "bbox": pa.array([r.bbox for r in rows], pa.list_(pa.float64())).take(take),
        "area": pa.array([r.area for r in rows], pa.float64()).take(take),
    }
    schema = ANNOTATIONS_SCHEMA
    if any(r.iscrowd is not msgspec.UNSET for r in rows):
        columns["iscrowd"] = pa.array(
            [None if r.iscrowd is msgspec.UNSET else r.iscrowd for r in rows], pa.int32()
        ).take(take)
        schema = schema.append(pa.field("iscrowd", pa.int32()))
    if any(len(r.segmentation) for r in rows):
        rows_image = np.searchsorted(image_ids, image_id)
        sizes = (
            images["height"].to_numpy(zero_copy_only=False),
            images["width"].to_numpy(zero_copy_only=False),
        )
        masks = [
            _checked_mask(path, row, (sizes[0][at], sizes[1][at]))
            for row, at in zip(rows, rows_image.tolist(), strict=True)
        ]
        columns["segmentation"] = pa.array(masks, pa.string()).take(take)
        schema = schema.append(pa.field("segmentation", pa.string()))
    return pa.table(columns, schema=schema)


def _checked_mask(path: Path, row: _Annotation, image_size: tuple[Any, Any]) -> str | None:
    """The annotation's segmentation as JSON text, after checking it is a well-formed mask."""
    if not len(row.segmentation) or bytes(row.segmentation) == b"null":  # box-only data
        return None
    try:
        mask = _MASK.decode(row.segmentation)
    except msgspec.ValidationError as error:
        raise DataError(
            f"{path}: annotation {row.id}: segmentation is neither polygons (lists of x, y numbers) nor "
            f"an RLE ({{'size': [height, width], 'counts': ...}}): {error}"
        ) from None
    if isinstance(mask, list):
        for number, polygon in enumerate(mask):
            if len(polygon) % 2:
                raise DataError(
                    f"{path}: annotation {row.id}: polygon {number} has an odd number of coordinates "
                    f"({len(polygon)}); a polygon is a flat list of x, y pairs"
                )
    else:
        _check_rle(path, row.id, mask, image_size)
    return bytes(row.segmentation).decode()


def _check_rle(path: Path, annotation_id: int, rle: _RLE, image_size: tuple[Any, Any]) -> None:
    height, width = (None if v is None or v != v else int(v) for v in image_size)
    known = height is not None and width is not None
    if len(rle.size) != 2 or min(rle.size) < 0 or (known and rle.size != [height, width]):
        raise DataError(
            f"{path}: annotation {annotation_id}: RLE size {rle.size} is not its image's "
            f"[height, width] ({[height, width] if known else 'two non-negative integers'})"
        )
    runs = _rle_runs(rle.counts) if isinstance(rle.counts, str) else rle.counts
    if runs is None or any(r < 0 for r in runs) or sum(runs) != rle.size[0] * rle.size[1]:
        raise DataError(
            f"{path}: annotation {annotation_id}: the RLE counts do not cover its size {rle.size} "
            f"({'undecodable' if runs is None else sum(runs)} pixels, expected {rle.size[0] * rle.size[1]})"
        )


def _rle_runs(counts: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string (``maskApi.c``'s ``rleFrString``), or None
    when it does not decode. By hand because pycocotools, which decodes it in C, is not a runtime
    dependency, and crowd RLEs are few: this runs once per RLE annotation at ingest."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            chunk = ord(counts[position]) - 48
            if not 0 <= chunk < 64:
                return None
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position, shift = position + 1, shift + 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def read_coco_captions(path: Path, image_ids: list[int]) -> pa.Array:
    """A COCO captions file (``captions_train2017.json``: ``annotations`` of ``image_id`` and
    ``caption``) as one string per image of ``image_ids``, its captions one per line in annotation
    order (null for an image without one). A caption for an image not in ``image_ids`` is an error
    naming the annotation."""
    data = path.read_bytes()
    expected = "expected a COCO captions file: an object with an 'annotations' list"
    sections = _sections(path, data, expected)
    if not _is_list(sections.get("annotations")):
        raise DataError(f"{path}: {expected}")
    rows = _decode(path, data, sections, "annotations", _Caption)
    caption_images = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    unknown = ~np.isin(caption_images, np.asarray(image_ids, np.int64))
    if unknown.any():
        row = rows[int(np.argmax(unknown))]
        raise DataError(
            f"{path}: caption annotation {row.id} is for image {row.image_id}, "
            "which the instances file does not list; are these captions for another split?"
        )
    lines: dict[int, list[str]] = {}
    for row in rows:
        lines.setdefault(row.image_id, []).append(" ".join(row.caption.split()))
    return pa.array(["\n".join(lines[i]) if i in lines else None for i in image_ids], pa.string())
