"""What the last steps produce: training reports, the run report, the Hugging Face and COCO exports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Self

from rebalance.io.references import ImageRef


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
    """The run report: ``report.html`` beside ``plots/<name>.png`` and the figures as ``report.json``;
    ``files`` are the gallery's pages and thumbnails, by path under ``gallery/``."""

    html: str
    plots: dict[str, bytes]
    figures: dict[str, Any]
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(self.plots)

    def write(self, directory: Path) -> None:
        (directory / "plots").mkdir()
        for name, png in self.plots.items():
            (directory / "plots" / f"{name}.png").write_bytes(png)
        (directory / "report.html").write_text(self.html)
        (directory / "report.json").write_text(json.dumps(self.figures, indent=2, sort_keys=True))
        for relative, data in sorted(self.files.items()):
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    @classmethod
    def read(cls, directory: Path) -> Self:
        plots = {path.stem: path.read_bytes() for path in sorted((directory / "plots").glob("*.png"))}
        files = {
            path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted((directory / "gallery").rglob("*"))
            if path.is_file()
        }
        return cls(
            (directory / "report.html").read_text(),
            plots,
            json.loads((directory / "report.json").read_text()),
            files,
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


@dataclasses.dataclass(frozen=True)
class CocoExport:
    """COCO / LVIS instances files for detector trainers: ``documents`` (file name -> its bytes:
    the JSON files) beside ``images`` (file name under ``images/`` -> where its bytes are now),
    copied one at a time when written, so no image is held in memory."""

    documents: dict[str, bytes]
    images: dict[str, ImageRef] = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(json.loads(self.documents["export.json"])["images"])

    def write(self, directory: Path) -> None:
        for name, data in self.documents.items():
            (directory / name).write_bytes(data)
        if self.images:
            (directory / "images").mkdir()
            for name, ref in self.images.items():
                (directory / "images" / name).write_bytes(ref.read_bytes())

    @classmethod
    def read(cls, directory: Path) -> Self:
        documents = {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}
        folder = directory / "images"
        images = {path.name: ImageRef(path) for path in sorted(folder.iterdir())} if folder.is_dir() else {}
        return cls(documents, images)
