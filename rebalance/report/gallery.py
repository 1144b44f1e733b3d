"""The report's image gallery: per class, what the pipeline added and removed, the doubtful first.

For each class, in this order:

- **Retrieved**: least confident first (the retrieval score, lowest first; the class's precision
  estimate in the heading), each with its score and the query that found it, marked where the
  pool's reference label (never read by retrieval) names another class.
- **Synthetic**: lowest CLIP score first, each with its prompt, seed and CLIP score, and its parent
  image for img2img; feature-space rows (SMOTE, calibrated Gaussians) have no pixels and are
  listed with their parents instead.
- **Removed**: each with the rule that removed it, beside the kept image it duplicated (dedup).
- **Rare-class test errors**: what the rebalanced model predicted instead, and the baseline's
  prediction for the same image.

Classes come in order of need: rare classes first (fewest images first), then the least precise
retrieval, then the rest. A cap per class and kind (``cap``) keeps pages light; the counts say how
many there were. The first ``classes_per_page`` classes go on the report's own page, the rest on
``gallery/page-N.html`` pages, every class linked from ``gallery/index.html``. Each image becomes
one small JPEG thumbnail, written once however often it is shown, from any image reference (a file,
a tar member, a parquet cell).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.domain.artifacts import LabeledDataset, TrainReport
from rebalance.domain.classes import class_buckets, class_counts
from rebalance.domain.ledger import same_class_name
from rebalance.errors import DataError
from rebalance.io.references import ImageRef, open_image

DEFAULT_CAP = 24
DEFAULT_CLASSES_PER_PAGE = 12
THUMBNAIL_PX = 96
FOLDER = "gallery"
KINDS = ("retrieved", "synthetic", "removed", "test errors")


@dataclasses.dataclass(frozen=True)
class Tile:
    """One image (or image-less row) and what to say about it."""

    thumbnail: str | None  # path under the report folder; None when the row has no pixels
    lines: tuple[str, ...]
    warning: str | None = None  # e.g. the pool's reference label disagrees
    beside: Tile | None = None  # the kept image a removed one duplicated, or an img2img parent


@dataclasses.dataclass(frozen=True)
class Section:
    kind: str
    total: int
    note: str
    tiles: tuple[Tile, ...]


@dataclasses.dataclass(frozen=True)
class ClassGallery:
    name: str
    bucket: str
    anchor: str
    sections: tuple[Section, ...]

    def counts(self) -> dict[str, int]:
        return {section.kind: section.total for section in self.sections}


@dataclasses.dataclass(frozen=True)
class Gallery:
    """The classes on the first page, the other pages (file name -> classes) and the thumbnails."""

    first_page: tuple[ClassGallery, ...]
    pages: dict[str, tuple[ClassGallery, ...]]
    thumbnails: dict[str, bytes]
    cap: int

    @property
    def classes(self) -> list[ClassGallery]:
        return [*self.first_page, *(cls for page in self.pages.values() for cls in page)]

    @property
    def class_count(self) -> int:
        return len(self.first_page) + sum(len(page) for page in self.pages.values())

    @property
    def more(self) -> bool:
        """Whether classes beyond the first page have pages of their own."""
        return bool(self.pages)

    def page_of(self, anchor: str) -> str | None:
        """The gallery page (under ``gallery/``) holding the class ``anchor``; None for the first page."""
        return next(
            (name for name, page in self.pages.items() if any(c.anchor == anchor for c in page)), None
        )

    def figures(self) -> dict[str, Any]:
        """The gallery's size, for report.json: what was found, what is shown, how many files."""
        found = {kind: 0 for kind in KINDS}
        shown = {kind: 0 for kind in KINDS}
        for gallery in self.classes:
            for section in gallery.sections:
                found[section.kind] += section.total
                shown[section.kind] += len(section.tiles)
        return {
            "class_count": self.class_count,
            "more": self.more,
            "pages": 1 + len(self.pages),
            "cap": self.cap,
            "found": found,
            "shown": shown,
            "thumbnails": len(self.thumbnails),
            "thumbnail_bytes": sum(len(data) for data in self.thumbnails.values()),
            # What the first page shows, so another page (the baselines panel) can show it too.
            "first_page": [dataclasses.asdict(cls) for cls in self.first_page],
        }


class Thumbnails:
    """Small JPEGs of images by reference, each made once; a reference that cannot be read has none."""

    def __init__(self, size: int = THUMBNAIL_PX):
        self.size = size
        self.files: dict[str, bytes] = {}
        self._made: dict[str, str | None] = {}

    def of(self, ref: ImageRef) -> str | None:
        key = str(ref)
        if key not in self._made:
            self._made[key] = self._make(ref, key)
        return self._made[key]

    def _make(self, ref: ImageRef, key: str) -> str | None:
        from PIL import Image

        try:
            with open_image(ref) as image:
                image = image.convert("RGB")
                image.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
                buffer = io.BytesIO()
                # JPEG: a photo's thumbnail is several times smaller than as PNG, and at LVIS
                # scale a gallery page holds over a thousand of them.
                image.save(buffer, format="JPEG", quality=85)
        except (OSError, ValueError, DataError):
            return None  # unreadable, or not an image at all (a generated candidate that was dropped)
        path = f"{FOLDER}/img/{hashlib.sha256(key.encode()).hexdigest()[:20]}.jpg"
        self.files[path] = buffer.getvalue()
        return path


def build_gallery(
    original: LabeledDataset,
    final: LabeledDataset,
    runs: dict[str, TrainReport],
    test: LabeledDataset | None,
    *,
    cap: int = DEFAULT_CAP,
    classes_per_page: int = DEFAULT_CLASSES_PER_PAGE,
    thresholds: tuple[int, int] = (10, 100),
) -> Gallery:
    """The gallery of one run: ``final`` against ``original``; ``runs`` and ``test`` for the errors."""
    names = original.class_names()
    buckets = class_buckets(original, rare_max_images=thresholds[0], common_max_images=thresholds[1])
    thumbnails = Thumbnails()
    position = {
        category_id: index for index, category_id in enumerate(final.categories["category_id"].to_pylist())
    }
    per_class: list[list[Section]] = [[] for _ in names]
    for index, section in _retrieved(final, position, thumbnails, cap):
        per_class[index].append(section)
    for index, section in _synthetic(final, original, position, thumbnails, cap):
        per_class[index].append(section)
    for index, section in _removed(final, original, position, thumbnails, cap):
        per_class[index].append(section)
    if test is not None:
        for index, section in _test_errors(test, runs, names, buckets, thumbnails, cap):
            per_class[index].append(section)
    order = _order_of_need(original, final, buckets)
    classes = [
        ClassGallery(names[index], buckets[index], f"class-{index}", tuple(per_class[index]))
        for index in order
        if per_class[index]
    ]
    first, rest = classes[:classes_per_page], classes[classes_per_page:]
    pages = {
        f"page-{number + 2}.html": tuple(rest[start : start + classes_per_page])
        for number, start in enumerate(range(0, len(rest), classes_per_page))
    }
    return Gallery(tuple(first), pages, thumbnails.files, cap)


def _order_of_need(original: LabeledDataset, final: LabeledDataset, buckets: list[str]) -> list[int]:
    """Rare classes first (fewest images first), then the least precise retrieval, then by count."""
    counts = class_counts(original)[0]
    low = (
        final.categories["precision_low"].to_pylist()
        if "precision_low" in final.categories.column_names
        else [None] * len(buckets)
    )

    def need(index: int) -> tuple:
        precision = low[index]
        precise = 2.0 if precision is None or math.isnan(precision) else precision
        return (buckets[index] != "rare", precise, int(counts[index]), index)

    return sorted(range(len(buckets)), key=need)


def _first_class(dataset: LabeledDataset, rows: pa.Table, position: dict[int, int]) -> list[int]:
    """The class position of each row of ``rows`` (its first label: added rows carry one)."""
    annotations = dataset.annotations.filter(
        pc.is_in(dataset.annotations["image_id"], value_set=rows["image_id"])
    )
    first: dict[int, int] = {}
    for image_id, category_id in zip(
        annotations["image_id"].to_pylist(), annotations["category_id"].to_pylist(), strict=True
    ):
        first.setdefault(image_id, position[category_id])
    return [first.get(image_id, -1) for image_id in rows["image_id"].to_pylist()]


def _grouped(classes: Sequence[int], keys: Sequence[Any]) -> dict[int, list[int]]:
    """Row positions per class, each class's rows sorted by ``keys`` (ties by row order)."""
    grouped: dict[int, list[int]] = {}
    for row in sorted(range(len(classes)), key=lambda r: (keys[r], r)):
        if classes[row] >= 0:
            grouped.setdefault(classes[row], []).append(row)
    return grouped


def _column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


def _retrieved(final: LabeledDataset, position: dict[int, int], thumbnails: Thumbnails, cap: int):
    images = final.images
    if "retrieval_score" not in images.column_names:
        return
    rows = images.filter(pc.equal(images["source"], "retrieved"))
    if not rows.num_rows:
        return
    scores = [math.inf if s is None else s for s in _column(rows, "retrieval_score")]
    queries, labels = _column(rows, "retrieval_query"), _column(rows, "reference_label")
    files = rows["file_name"].to_pylist()
    classes = _first_class(final, rows, position)
    names = final.class_names()
    categories = final.categories
    estimates = {
        column: _column(categories, column)
        for column in ("precision_estimate", "precision_low", "precision_high")
    }
    for index, members in _grouped(classes, scores).items():
        tiles = []
        for row in members[:cap]:
            label = labels[row]
            tiles.append(
                Tile(
                    thumbnails.of(final.image_ref(files[row])),
                    (
                        f"score {scores[row]:.3f}" if math.isfinite(scores[row]) else "no score (not ranked)",
                        f"query: {queries[row]}" if queries[row] is not None else "",
                    ),
                    None if label is None or same_class_name(label, names[index]) else f"pool label: {label}",
                )
            )
        estimate = estimates["precision_estimate"][index]
        note = "least confident (lowest score) first"
        if estimate is not None and not math.isnan(estimate):
            note += (
                f"; estimated precision {estimate:.0%} "
                f"(90% interval {estimates['precision_low'][index]:.0%}–{estimates['precision_high'][index]:.0%})"
            )
        yield index, Section("retrieved", len(members), note, tuple(tiles))


def _synthetic(
    final: LabeledDataset,
    original: LabeledDataset,
    position: dict[int, int],
    thumbnails: Thumbnails,
    cap: int,
):
    images = final.images
    rows = images.filter(pc.equal(images["source"], "synthetic"))
    if not rows.num_rows:
        return
    clip = [-math.inf if s is None else s for s in _column(rows, "clip_score")]
    files, prompts, seeds = (
        rows["file_name"].to_pylist(),
        _column(rows, "synthesis_prompt"),
        _column(rows, "synthesis_seed"),
    )
    methods, parents = _column(rows, "synthesis_method"), _column(rows, "synthesis_parent")
    neighbours = _column(rows, "synthesis_neighbor")
    parent_files = dict(
        zip(original.images["image_id"].to_pylist(), original.images["file_name"].to_pylist(), strict=True)
    )
    classes = _first_class(final, rows, position)
    for index, members in _grouped(classes, clip).items():
        tiles = []
        for row in members[:cap]:
            method = methods[row] or "synthetic"
            if files[row] is None:  # a feature-space row: parents and a seed, no pixels
                lines = (
                    method,
                    f"parent image {parents[row]}",
                    f"neighbour image {neighbours[row]}",
                    f"seed {seeds[row]}",
                )
                tiles.append(Tile(None, tuple(line for line in lines if "None" not in line)))
                continue
            parent = parent_files.get(parents[row]) if parents[row] is not None else None
            tiles.append(
                Tile(
                    thumbnails.of(final.image_ref(files[row])),
                    (
                        f"prompt: {prompts[row]}" if prompts[row] else method,
                        f"seed {seeds[row]}",
                        f"CLIP score {clip[row]:.3f}" if math.isfinite(clip[row]) else "",
                    ),
                    beside=None
                    if parent is None
                    else Tile(thumbnails.of(original.image_ref(parent)), (f"parent image {parents[row]}",)),
                )
            )
        yield index, Section("synthetic", len(members), "lowest CLIP score first", tuple(tiles))


def _removed(
    final: LabeledDataset,
    original: LabeledDataset,
    position: dict[int, int],
    thumbnails: Thumbnails,
    cap: int,
):
    removed = final.removed
    if not removed.num_rows:
        return
    kept_files = dict(
        zip(final.images["image_id"].to_pylist(), final.images["file_name"].to_pylist(), strict=True)
    )
    kept_ids = _column(removed, "kept_image_id")
    files, steps, reasons = (
        removed["file_name"].to_pylist(),
        removed["step"].to_pylist(),
        removed["reason"].to_pylist(),
    )
    classes = [position.get(ids[0], -1) if ids else -1 for ids in removed["category_ids"].to_pylist()]
    for index, members in _grouped(classes, steps).items():
        tiles = []
        for row in members[:cap]:
            kept = kept_files.get(kept_ids[row]) if kept_ids[row] is not None else None
            tiles.append(
                Tile(
                    thumbnails.of(final.image_ref(files[row])) if files[row] else None,
                    (steps[row], reasons[row]),
                    beside=None
                    if kept is None
                    else Tile(thumbnails.of(final.image_ref(kept)), (f"kept image {kept_ids[row]}",)),
                )
            )
        yield index, Section("removed", len(members), "with the rule that removed each", tuple(tiles))


def _test_errors(
    test: LabeledDataset,
    runs: dict[str, TrainReport],
    names: list[str],
    buckets: list[str],
    thumbnails: Thumbnails,
    cap: int,
):
    """Rare-class test images the rebalanced model gets wrong, beside the baseline's answer."""
    pairs = [("rebalanced", "baseline"), ("cnn_rebalanced", "cnn_baseline")]
    pair = next(
        (p for p in pairs if all("test_predictions" in getattr(runs.get(r), "metrics", {}) for r in p)), None
    )
    if pair is None:
        return
    rebalanced = np.asarray(runs[pair[0]].metrics["test_predictions"])
    baseline = np.asarray(runs[pair[1]].metrics["test_predictions"])
    truth = test.single_labels("showing test errors")
    files = test.images["file_name"].to_pylist()
    wrong = (rebalanced != truth) & np.isin(
        truth, [i for i, bucket in enumerate(buckets) if bucket == "rare"]
    )
    for index, members in _grouped(truth.tolist(), (~wrong).tolist()).items():
        members = [row for row in members if wrong[row]]
        if not members:
            continue
        tiles = tuple(
            Tile(
                thumbnails.of(test.image_ref(files[row])),
                (
                    f"{pair[0]}: {names[rebalanced[row]]}",
                    f"{pair[1]}: {names[baseline[row]]}",
                ),
                warning="the baseline got it right" if baseline[row] == truth[row] else None,
            )
            for row in members[:cap]
        )
        yield index, Section("test errors", len(members), f"what {pair[0]} predicted instead", tiles)


def gallery_files(gallery: Gallery, title: str) -> dict[str, bytes]:
    """The files under the report folder: thumbnails, the further pages and the index of classes."""
    from rebalance.report.templates import render

    files = dict(gallery.thumbnails)
    for name, classes in gallery.pages.items():
        files[f"{FOLDER}/{name}"] = render(
            "gallery_page", title=f"{title}: gallery, {name}", classes=classes
        ).encode()
    rows = [
        {
            "name": cls.name,
            "bucket": cls.bucket,
            "href": f"{gallery.page_of(cls.anchor) or '../report.html'}#{cls.anchor}",
            "counts": [cls.counts().get(kind, 0) for kind in KINDS],
        }
        for cls in gallery.classes
    ]
    files[f"{FOLDER}/index.html"] = render(
        "gallery_index", title=f"{title}: gallery", rows=rows, kinds=KINDS, cap=gallery.cap
    ).encode()
    return files
