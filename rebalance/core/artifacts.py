"""Artifacts: the typed values steps pass to each other, and all of their file I/O.

Every artifact type implements the same small protocol (``write``/``read``/``num_rows``), plus
``split``/``concat`` when a shardable step may consume it. The runner wraps ``write`` in an atomic
temp → fsync → rename, so an artifact folder on disk is always complete.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rebalance.errors import DataError


@runtime_checkable
class Artifact(Protocol):
    def write(self, directory: Path) -> None: ...

    @classmethod
    def read(cls, directory: Path) -> Self: ...

    @property
    def num_rows(self) -> int: ...


@runtime_checkable
class ShardableArtifact(Artifact, Protocol):
    def shard(self, index: int, num_shards: int) -> Self: ...

    @classmethod
    def concat(cls, parts: list[Self]) -> Self: ...


def write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed writer options so the same table always gives the same bytes.
    pq.write_table(table, path, compression="zstd", write_statistics=True, store_schema=True)


def read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path, memory_map=True)


IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source", pa.string()),
    ]
)
ANNOTATIONS_SCHEMA = pa.schema(
    [
        ("annotation_id", pa.int64()),
        ("image_id", pa.int64()),
        ("category_id", pa.int64()),
        ("bbox", pa.list_(pa.float64())),
        ("area", pa.float64()),
    ]
)
CATEGORIES_SCHEMA = pa.schema(
    [
        ("category_id", pa.int64()),
        ("name", pa.string()),
        ("synonyms", pa.list_(pa.string())),
        ("definition", pa.string()),
        ("synset", pa.string()),
        ("frequency", pa.string()),
        ("image_count", pa.int64()),
        ("instance_count", pa.int64()),
    ]
)
REMOVED_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("source", pa.string()),
        ("category_ids", pa.list_(pa.int64())),
        ("step", pa.string()),
        ("reason", pa.string()),
    ]
)


def _images_table(file_names: list[str], split: str, source: str) -> pa.Table:
    count = len(file_names)
    columns = {"image_id": range(count), "file_name": file_names, "split": [split] * count}
    columns |= {"width": [None] * count, "height": [None] * count, "source": [source] * count}
    return pa.table(columns, schema=IMAGES_SCHEMA)


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
    def unlabeled(cls, file_names: list[str], *, split: str, source: str, image_root: str | None) -> Self:
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

    def image_path(self, file_name: str) -> Path:
        path = Path(file_name)
        return path if path.is_absolute() or self.image_root is None else Path(self.image_root) / path

    def write(self, directory: Path) -> None:
        for name in ("images", "annotations", "categories", "removed"):
            write_parquet(getattr(self, name), directory / f"{name}.parquet")
        if self.files:
            (directory / "files").mkdir()
            for name, data in sorted(self.files.items()):
                (directory / "files" / name).write_bytes(data)
        (directory / "meta.json").write_text(
            json.dumps({"image_root": self.image_root, "files": bool(self.files)})
        )

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
            tables["images"] = images.drop_columns(["artifact_file"])
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

    def drop(self, drop: np.ndarray, step_name: str, reasons: list[str]) -> Self:
        """Remove the images where ``drop`` is True with their annotations, recording each in ``removed``.

        A removed row keeps the image's ``source`` and class ids, so a report can say what each
        step took from each class, including rows that an earlier step added.
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


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """Per-class statistics (``table``) and dataset-level figures (``summary``)."""

    table: pa.Table
    summary: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def write(self, directory: Path) -> None:
        write_parquet(self.table, directory / "class_stats.parquet")
        (directory / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True))
        (directory / "class_stats.md").write_text(markdown_table(self.table))

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(
            table=read_parquet(directory / "class_stats.parquet"),
            summary=json.loads((directory / "summary.json").read_text()),
        )


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """One float32 vector per image: ``ids`` (image ids, int64) aligned with ``vectors`` (n × d).

    ``encoder`` names what produced them (e.g. ``pixels_pca``), so every figure downstream can say
    which representation it was computed on.
    """

    ids: np.ndarray
    vectors: np.ndarray
    encoder: str

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    def write(self, directory: Path) -> None:
        np.save(directory / "ids.npy", self.ids)
        np.save(directory / "vectors.npy", self.vectors)
        (directory / "meta.json").write_text(
            json.dumps({"encoder": self.encoder, "dim": int(self.vectors.shape[1])})
        )

    @classmethod
    def read(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        return cls(
            np.load(directory / "ids.npy"), np.load(directory / "vectors.npy", mmap_mode="r"), meta["encoder"]
        )

    def shard(self, index: int, num_shards: int) -> Self:
        size = math.ceil(self.num_rows / num_shards)
        rows = slice(index * size, (index + 1) * size)
        return dataclasses.replace(self, ids=self.ids[rows], vectors=np.asarray(self.vectors[rows]))

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        # An empty shard's vectors may lack the dim (its encoder never ran): skip it.
        filled = [p for p in parts if p.num_rows] or parts[:1]
        return cls(
            np.concatenate([p.ids for p in filled]),
            np.concatenate([p.vectors for p in filled]),
            parts[0].encoder,
        )

    def aligned_to(self, image_ids: np.ndarray) -> np.ndarray:
        """Vectors in the order of ``image_ids``; every id must have a vector."""
        rows, missing = positions_of(self.ids, image_ids)
        if len(missing):
            raise DataError(
                f"{len(missing)} image(s) have no embedding (first ids: {missing[:5].tolist()}); embed the same dataset"
            )
        return np.asarray(self.vectors[rows])


@dataclasses.dataclass(frozen=True)
class VectorIndex:
    """A FAISS index over ``ids`` (image ids of the pool, in index-row order) with its settings.

    ``meta`` records the factory string, the encoder of the vectors, their count and dim, and the
    default ``nprobe``. On disk: ``index.faiss`` (``faiss.write_index``; read back memory-mapped
    when the index type allows it), ``ids.npy`` and ``meta.json``.
    """

    index: Any  # a CPU faiss.Index; faiss is imported lazily
    ids: np.ndarray
    meta: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def encoder(self) -> str:
        return self.meta["encoder"]

    def write(self, directory: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(directory / "index.faiss"))
        np.save(directory / "ids.npy", self.ids)
        (directory / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Self:
        import faiss

        path = str(directory / "index.faiss")
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # index types without mmap support load into memory
            index = faiss.read_index(path)
        return cls(index, np.load(directory / "ids.npy"), json.loads((directory / "meta.json").read_text()))


@dataclasses.dataclass(frozen=True)
class Synonyms:
    """Per class: ``category_id``, ``concept`` (class name) and its ``synonyms`` (list of phrases)."""

    table: pa.Table

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def write(self, directory: Path) -> None:
        write_parquet(self.table, directory / "synonyms.parquet")

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(read_parquet(directory / "synonyms.parquet"))


@dataclasses.dataclass(frozen=True)
class CaptionCorpus:
    """A caption corpus as independently countable pieces: ``pieces`` has ``file``, ``row_group``
    (−1: the whole file) and ``rows``; ``column`` names the caption column.

    Rows are captions, so the runner shards a corpus by caption count; a shard is a contiguous run
    of pieces (a piece is never split), which keeps memory bounded whatever the corpus size.
    """

    pieces: pa.Table
    column: str

    @property
    def num_rows(self) -> int:
        return int(pc.sum(self.pieces["rows"]).as_py() or 0)

    def write(self, directory: Path) -> None:
        write_parquet(self.pieces, directory / "pieces.parquet")
        (directory / "meta.json").write_text(json.dumps({"column": self.column}))

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(
            read_parquet(directory / "pieces.parquet"),
            json.loads((directory / "meta.json").read_text())["column"],
        )

    def shard(self, index: int, num_shards: int) -> Self:
        rows = self.pieces["rows"].to_numpy()
        starts = np.cumsum(rows) - rows
        owner = (starts * num_shards) // max(int(rows.sum()), 1)
        return dataclasses.replace(self, pieces=self.pieces.filter(pa.array(owner == index)))

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        return cls(pa.concat_tables([part.pieces for part in parts]), parts[0].column)


@dataclasses.dataclass(frozen=True)
class ConceptCounts:
    """Raw caption counts per class (``table``: ``category_id``, ``concept``, ``count``,
    ``synonym_counts`` as JSON) over ``captions`` captions. Shards of a corpus add up exactly."""

    table: pa.Table
    captions: int
    summary: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def write(self, directory: Path) -> None:
        write_parquet(self.table, directory / "concept_counts.parquet")
        (directory / "summary.json").write_text(
            json.dumps({"captions": self.captions, **self.summary}, sort_keys=True)
        )

    @classmethod
    def read(cls, directory: Path) -> Self:
        summary = json.loads((directory / "summary.json").read_text())
        return cls(read_parquet(directory / "concept_counts.parquet"), summary.pop("captions"), summary)

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        first = parts[0]
        totals = np.sum([part.table["count"].to_numpy() for part in parts], axis=0)
        by_synonym = [json.loads(value) for value in first.table["synonym_counts"].to_pylist()]
        for part in parts[1:]:
            for merged, extra in zip(by_synonym, part.table["synonym_counts"].to_pylist(), strict=True):
                for synonym, count in json.loads(extra).items():
                    merged[synonym] += count
        table = first.table.set_column(
            first.table.schema.get_field_index("count"), "count", pa.array(totals, pa.int64())
        )
        table = table.set_column(
            table.schema.get_field_index("synonym_counts"),
            "synonym_counts",
            pa.array([json.dumps(c) for c in by_synonym]),
        )
        return cls(table, sum(part.captions for part in parts), first.summary)


@dataclasses.dataclass(frozen=True)
class ConceptFrequency:
    """Caption counts per class (``table``), corpus figures (``summary``) and a rank plot (PNG)."""

    table: pa.Table
    summary: dict[str, Any]
    plot: bytes

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def write(self, directory: Path) -> None:
        write_parquet(self.table, directory / "concept_frequency.parquet")
        (directory / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True))
        (directory / "concept_frequency.md").write_text(
            markdown_table(self.table.drop_columns(["synonym_counts"]))
        )
        (directory / "concept_frequency.png").write_bytes(self.plot)

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(
            read_parquet(directory / "concept_frequency.parquet"),
            json.loads((directory / "summary.json").read_text()),
            (directory / "concept_frequency.png").read_bytes(),
        )


@dataclasses.dataclass(frozen=True)
class EpochIndex:
    """Image ids in training order, one row per draw: ``epoch``, ``position``, ``image_id``."""

    table: pa.Table

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def write(self, directory: Path) -> None:
        write_parquet(self.table, directory / "epoch_index.parquet")

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(read_parquet(directory / "epoch_index.parquet"))


@dataclasses.dataclass(frozen=True)
class TrainReport:
    """What a training run measured: ``metrics`` (top-1, mean class accuracy, per bucket, per
    class), the configuration, the loss of each epoch and any warnings; stored as one JSON."""

    metrics: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return int(self.metrics["test_samples"])

    def write(self, directory: Path) -> None:
        (directory / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Self:
        return cls(json.loads((directory / "metrics.json").read_text()))


@dataclasses.dataclass(frozen=True)
class Report:
    """The run report: ``report.html`` beside ``plots/<name>.png`` and the figures as ``report.json``."""

    html: str
    plots: dict[str, bytes]
    figures: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return len(self.plots)

    def write(self, directory: Path) -> None:
        (directory / "plots").mkdir()
        for name, png in self.plots.items():
            (directory / "plots" / f"{name}.png").write_bytes(png)
        (directory / "report.html").write_text(self.html)
        (directory / "report.json").write_text(json.dumps(self.figures, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Self:
        plots = {path.stem: path.read_bytes() for path in sorted((directory / "plots").glob("*.png"))}
        return cls(
            (directory / "report.html").read_text(),
            plots,
            json.loads((directory / "report.json").read_text()),
        )


@dataclasses.dataclass(frozen=True)
class HFDatasetExport:
    """A Hugging Face ``DatasetDict`` plus its dataset card, written so any trainer can load it.

    On disk: ``save_to_disk`` files (``dataset_dict.json``, one folder per split) for
    ``datasets.load_from_disk``, and ``data/<split>-NNNNN-of-NNNNN.parquet`` shards declared in the
    card's YAML header for ``datasets.load_dataset(<folder>)`` or ``load_dataset("parquet", ...)``.
    """

    dataset: Any  # datasets.DatasetDict; typed loosely to keep `datasets` out of import time
    card: str
    num_shards: int
    plots: dict[str, bytes] = dataclasses.field(default_factory=dict)
    # Class name -> rare / common / frequent, from the counts *before* rebalancing, so a trainer
    # scores the exported data on the buckets the pipeline used (after rebalancing all look frequent).
    class_buckets: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(split.num_rows for split in self.dataset.values())

    def write(self, directory: Path) -> None:
        import datasets

        # The runner reports progress per step; per-file bars from `datasets` would interleave.
        datasets.disable_progress_bars()
        self.dataset.save_to_disk(str(directory), num_shards=self._shards_per_split())
        data = directory / "data"
        data.mkdir()
        for split, shards in self._shards_per_split().items():
            for index in range(shards):
                part = self.dataset[split].shard(shards, index, contiguous=True)
                part.to_parquet(str(data / f"{split}-{index:05d}-of-{shards:05d}.parquet"))
        (directory / "README.md").write_text(self.card)
        (directory / "export.json").write_text(
            json.dumps({"num_shards": self.num_shards, "class_buckets": self.class_buckets}, indent=2)
        )
        if self.plots:
            (directory / "plots").mkdir()
            for name, png in self.plots.items():
                (directory / "plots" / f"{name}.png").write_bytes(png)

    def _shards_per_split(self) -> dict[str, int]:
        return {split: max(1, min(self.num_shards, ds.num_rows)) for split, ds in self.dataset.items()}

    @classmethod
    def read(cls, directory: Path) -> Self:
        import datasets

        meta = json.loads((directory / "export.json").read_text())
        return cls(
            datasets.load_from_disk(str(directory)),
            (directory / "README.md").read_text(),
            meta["num_shards"],
            class_buckets=meta.get("class_buckets", {}),
        )


def positions_of(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``wanted``, its position in ``ids`` (binary search, no dict); and the wanted ids
    that ``ids`` lacks (their positions are meaningless)."""
    order = np.argsort(ids, kind="stable")
    found = np.searchsorted(ids, wanted, sorter=order)
    rows = order[np.minimum(found, len(order) - 1)] if len(order) else found
    missing = wanted[(len(order) == 0) | (ids[rows] != wanted)] if len(wanted) else wanted
    return rows, missing


def markdown_text(text: str) -> str:
    """``text`` (a class name, a title: user input) as inert inline markdown on one line: no HTML,
    no links or code spans, no cell breaks in a table."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`\[\]|])", r"\\\1", escaped)


def markdown_table(table: pa.Table) -> str:
    """Render a small table as GitHub markdown (floats to 4 significant digits, text escaped)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return ", ".join(markdown_text(v) for v in value)
        return "" if value is None else markdown_text(value)

    header = "| " + " | ".join(markdown_text(name) for name in table.column_names) + " |"
    rule = "|" + "|".join("---" for _ in table.column_names) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in table.to_pylist()]
    return "\n".join([header, rule, *rows]) + "\n"
