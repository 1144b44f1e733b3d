"""``LabeledDataset``: images, annotations, categories and the ledger of removed rows."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.core.artifact import read_parquet, write_parquet
from rebalance.errors import DataError
from rebalance.io.references import ImageRef, image_ref
from rebalance.io.schemas import ANNOTATIONS_SCHEMA, CATEGORIES_SCHEMA, IMAGES_SCHEMA, REMOVED_SCHEMA


def _images_table(file_names: list[str] | pa.Array | pa.ChunkedArray, split: str, source: str) -> pa.Table:
    # Built column by column in Arrow: a pool of millions of rows makes no Python object per row.
    count = len(file_names)
    names = (
        file_names
        if isinstance(file_names, pa.Array | pa.ChunkedArray)
        else pa.array(file_names, pa.string())
    )
    columns = {
        "image_id": pa.array(np.arange(count, dtype=np.int64)),
        "file_name": names,
        "split": pa.repeat(pa.scalar(split), count),
        "width": pa.nulls(count, IMAGES_SCHEMA.field("width").type),
        "height": pa.nulls(count, IMAGES_SCHEMA.field("height").type),
        "source": pa.repeat(pa.scalar(source), count),
    }
    return pa.Table.from_pydict(columns).cast(IMAGES_SCHEMA)


def _with_cache_files(images: pa.Table, directory: Path) -> tuple[pa.Table, list[str]]:
    """``images`` with a ``cache_file`` column for rows whose file lives in another entry of the
    cache that ``directory`` is an entry of (``<cache>/<step>/<key>``): that file's path relative to
    ``directory``; and those entries, relative to ``directory`` too (the cache checks they exist)."""
    cache_root, here = directory.parent.parent.resolve(), directory.resolve()
    names = images["file_name"]
    # Only absolute names can point into the cache; a pool's relative names are skipped in Arrow.
    absolute = pc.fill_null(pc.starts_with(names, os.sep), False).to_numpy(zero_copy_only=False)
    rows = absolute.nonzero()[0]
    if not len(rows):
        return images, []
    relative: list[str | None] = [None] * len(names)
    entries = set()
    for row, name in zip(rows, names.filter(pa.array(absolute)).to_pylist(), strict=True):
        path = Path(name).resolve()
        inside = path.relative_to(cache_root).parts if path.is_relative_to(cache_root) else ()
        if len(inside) >= 3:
            relative[row] = os.path.relpath(path, here)
            entries.add(os.path.relpath(cache_root / inside[0] / inside[1], here))
    if not entries:
        return images, []
    return images.append_column("cache_file", pa.array(relative, pa.string())), sorted(entries)


def _next_id(ids: pa.ChunkedArray) -> int:
    return (pc.max(ids).as_py() + 1) if len(ids) else 0


def _split_of(dataset: LabeledDataset) -> str:
    return dataset.images["split"][0].as_py() if dataset.num_rows else "train"


def _rows_like(schema: pa.Schema, columns: dict[str, pa.Array], count: int) -> pa.Table:
    """New rows for a table of ``schema``: the given columns, nulls for the others."""
    arrays = [
        columns[field.name].cast(field.type) if field.name in columns else pa.nulls(count, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclasses.dataclass(frozen=True)
class LabeledDataset:
    """A labelled image dataset: one internal form for image folders, COCO and LVIS.

    Tables (pyarrow): ``images`` (IMAGES_SCHEMA, plus any extra columns an ingest keeps, e.g.
    LVIS ``neg_category_ids``), ``annotations`` (one row per instance; one per image for
    classification), ``categories`` and ``removed`` (every image a step dropped, with the step and
    the reason, so no row disappears without a record).

    Invariant: images are sorted by ``image_id`` and annotations by (``image_id``,
    ``annotation_id``); shards are contiguous image ranges, so concatenating shards restores the
    original order exactly. ``file_name`` is relative to ``image_root`` unless absolute.
    """

    images: pa.Table
    annotations: pa.Table
    categories: pa.Table
    removed: pa.Table
    image_root: str | None
    # Images made by a step (e.g. diffusion), stored inside the artifact: name -> PNG bytes. Their
    # rows name them in `artifact_file`; once written and read back, `file_name` is their path.
    files: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def classification(
        cls,
        file_names: list[str],
        labels: list[int],
        class_names: list[str],
        *,
        split: str = "train",
        image_root: str | None = None,
    ) -> Self:
        """One image per file with one label each; image and category ids are positions."""
        count = len(file_names)
        images = _images_table(file_names, split, "original")
        annotations = pa.table(
            {
                "annotation_id": range(count),
                "image_id": range(count),
                "category_id": labels,
                "bbox": [None] * count,
                "area": [None] * count,
            },
            schema=ANNOTATIONS_SCHEMA,
        )
        categories = pa.table(
            {
                "category_id": range(len(class_names)),
                "name": class_names,
                **{name: [None] * len(class_names) for name in CATEGORIES_SCHEMA.names[2:]},
            },
            schema=CATEGORIES_SCHEMA,
        )
        return cls(images, annotations, categories, REMOVED_SCHEMA.empty_table(), image_root)

    @classmethod
    def unlabeled(
        cls,
        file_names: list[str] | pa.Array | pa.ChunkedArray,
        *,
        split: str,
        source: str,
        image_root: str | None,
    ) -> Self:
        """Images without annotations or classes, e.g. a retrieval pool; image ids are positions."""
        return cls(
            _images_table(file_names, split, source),
            ANNOTATIONS_SCHEMA.empty_table(),
            CATEGORIES_SCHEMA.empty_table(),
            REMOVED_SCHEMA.empty_table(),
            image_root,
        )

    @property
    def num_rows(self) -> int:
        return self.images.num_rows

    def image_ref(self, file_name: str) -> ImageRef:
        """Where the bytes of the image ``file_name`` are (a file, or a member of a tar shard)."""
        return image_ref(file_name, self.image_root)

    def write(self, directory: Path) -> None:
        images, cache_entries = _with_cache_files(self.images, directory)
        write_parquet(images, directory / "images.parquet")
        for name in ("annotations", "categories", "removed"):
            write_parquet(getattr(self, name), directory / f"{name}.parquet")
        if self.files:
            (directory / "files").mkdir()
            for name, data in sorted(self.files.items()):
                (directory / "files" / name).write_bytes(data)
        meta: dict[str, Any] = {"image_root": self.image_root, "files": bool(self.files)}
        if cache_entries:
            meta["cache_entries"] = cache_entries
        (directory / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def read(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        tables = {
            name: read_parquet(directory / f"{name}.parquet")
            for name in ("images", "annotations", "categories", "removed")
        }
        images = tables["images"]
        if meta.get("files"):
            # Rows whose image lives in this artifact get its absolute path as their file_name.
            stored = images["artifact_file"].to_pylist()
            names = [
                str(directory / "files" / f) if f else n
                for f, n in zip(stored, images["file_name"].to_pylist(), strict=True)
            ]
            images = images.set_column(
                images.schema.get_field_index("file_name"), "file_name", pa.array(names, pa.string())
            )
            images = images.drop_columns(["artifact_file"])
        if "cache_file" in images.column_names:
            # Files of another cache entry, stored relative to this one: found wherever the cache
            # folder now is. A published copy (outside the cache) keeps the absolute file_name.
            names = [
                str(candidate)
                if relative and (candidate := (directory / relative).resolve()).exists()
                else name
                for relative, name in zip(
                    images["cache_file"].to_pylist(), images["file_name"].to_pylist(), strict=True
                )
            ]
            images = images.set_column(
                images.schema.get_field_index("file_name"), "file_name", pa.array(names, pa.string())
            ).drop_columns(["cache_file"])
        tables["images"] = images
        return cls(**tables, image_root=meta["image_root"])

    def shard(self, index: int, num_shards: int) -> Self:
        size = math.ceil(self.num_rows / num_shards)
        images = self.images.slice(index * size, size)
        mask = pc.is_in(self.annotations["image_id"], value_set=images["image_id"])
        return dataclasses.replace(
            self,
            images=images,
            annotations=self.annotations.filter(mask),
            # Earlier removals travel with shard 0 only, so they are kept exactly once.
            removed=self.removed if index == 0 else self.removed.slice(0, 0),
        )

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        first = parts[0]
        return dataclasses.replace(
            first,
            images=pa.concat_tables([part.images for part in parts]),
            annotations=pa.concat_tables([part.annotations for part in parts]),
            removed=pa.concat_tables([part.removed for part in parts]),
            files={name: data for part in parts for name, data in part.files.items()},
        )

    def drop(
        self, drop: np.ndarray, step_name: str, reasons: list[str], kept: Sequence[int] | None = None
    ) -> Self:
        """Remove the images where ``drop`` is True with their annotations, recording each in ``removed``.

        A removed row keeps the image's ``source`` and class ids, so a report can say what each
        step took from each class, including rows that an earlier step added. ``kept``: for each
        removed row, the image id of the kept image it duplicated (dedup), shown beside it.
        """
        drop = np.asarray(drop, dtype=bool)
        mask = pa.array(drop)
        dropped_ids = self.images["image_id"].filter(mask)
        category_ids = self.categories["category_id"].to_numpy()
        lists = self.category_lists().filter(mask)
        classes = pa.ListArray.from_arrays(
            lists.offsets, pa.array(category_ids[lists.values.to_numpy()], pa.int64())
        )
        removed = pa.table(
            {
                "image_id": dropped_ids,
                "file_name": self.images["file_name"].filter(mask),
                "source": self.images["source"].filter(mask),
                "category_ids": classes,
                "step": [step_name] * len(dropped_ids),
                "reason": reasons,
                "kept_image_id": pa.array(
                    kept if kept is not None else [None] * len(dropped_ids), pa.int64()
                ),
            },
            schema=REMOVED_SCHEMA,
        )
        keep_annotation = pc.invert(pc.is_in(self.annotations["image_id"], value_set=dropped_ids))
        return dataclasses.replace(
            self,
            images=self.images.filter(pa.array(~drop)),
            annotations=self.annotations.filter(keep_annotation),
            removed=pa.concat_tables([self.removed, removed]),
        )

    def add_images(self, columns: dict[str, pa.Array], category_ids: np.ndarray) -> Self:
        """Append images, one label each, after the existing ones (new image and annotation ids).

        ``columns`` gives image columns for the new rows (``file_name``, ``source``, provenance);
        a column the dataset lacks is added, null for existing rows; a column the new rows lack is
        null for them. Ids continue after the largest existing id, so the sort invariant holds.
        """
        count = len(category_ids)
        images = self.images
        for name, values in columns.items():
            if name not in images.column_names:
                images = images.append_column(name, pa.nulls(images.num_rows, values.type))
        # Past every id ever used, removed rows included, so an id names one image for good.
        first_id = max(_next_id(self.images["image_id"]), _next_id(self.removed["image_id"]))
        new_ids = pa.array(np.arange(count, dtype=np.int64) + first_id)
        new_images = {"split": pa.array([_split_of(self)] * count), **columns, "image_id": new_ids}
        new_annotations = {
            "annotation_id": pa.array(
                np.arange(count, dtype=np.int64) + _next_id(self.annotations["annotation_id"])
            ),
            "image_id": new_ids,
            "category_id": pa.array(np.asarray(category_ids, dtype=np.int64)),
        }
        return dataclasses.replace(
            self,
            images=pa.concat_tables([images, _rows_like(images.schema, new_images, count)]),
            annotations=pa.concat_tables(
                [self.annotations, _rows_like(self.annotations.schema, new_annotations, count)]
            ),
        )

    def with_category_columns(self, columns: dict[str, pa.Array]) -> Self:
        """The dataset whose categories table has ``columns`` (one value a class), replacing any of
        the same name: a stage's per-class ledger, written again when the stage reruns."""
        categories = self.categories
        for name, values in columns.items():
            if name in categories.column_names:
                categories = categories.drop_columns([name])
            categories = categories.append_column(name, values)
        return dataclasses.replace(self, categories=categories)

    def class_names(self) -> list[str]:
        return self.categories["name"].to_pylist()

    def single_labels(self, needed_for: str) -> np.ndarray:
        """The class position (0..C-1) of every image; a DataError unless each has exactly one label."""
        lists = self.category_lists()
        lengths = np.diff(lists.offsets.to_numpy())
        if self.num_rows and not np.all(lengths == 1):
            raise DataError(
                f"{needed_for} needs exactly one label per image; {int(np.sum(lengths != 1))} image(s) "
                "have none or several"
            )
        return lists.flatten().to_numpy()

    def label_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (image row, class position) pair, once each: single- and multi-label data alike."""
        lists = self.category_lists()
        rows = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
        classes = pc.list_flatten(lists).to_numpy().astype(np.int64)
        unique = np.unique(rows * max(self.categories.num_rows, 1) + classes)
        return unique // max(self.categories.num_rows, 1), unique % max(self.categories.num_rows, 1)

    def category_lists(self) -> pa.ListArray:
        """For each image (in row order), the category positions (0..C-1) of its annotations."""
        positions = pc.index_in(self.annotations["category_id"], value_set=self.categories["category_id"])
        annotated = self.annotations["image_id"].to_numpy()
        image_ids = self.images["image_id"].to_numpy()
        # Both tables are sorted by image_id (the invariant above), so each image's annotations
        # form one contiguous run that searchsorted finds without a loop.
        starts = np.searchsorted(annotated, image_ids, side="left")
        ends = np.searchsorted(annotated, image_ids, side="right")
        if not np.array_equal(starts[1:], ends[:-1]) or (
            len(starts) and (starts[0], ends[-1]) != (0, len(annotated))
        ):
            raise DataError("annotations reference images that are not in the dataset")
        offsets = np.append(starts, len(annotated)) if len(starts) else np.zeros(1, dtype=np.int64)
        values = positions.combine_chunks() if isinstance(positions, pa.ChunkedArray) else positions
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values.cast(pa.int64()))
