"""Train on an exported Hugging Face dataset (``rebalance train``): no pipeline needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rebalance.core.device import resolve_device
from rebalance.domain.classes import frequency_buckets
from rebalance.errors import DataError
from rebalance.models.pixels import pca_project
from rebalance.train.metrics import classification_metrics
from rebalance.train.trainer import HeadConfig, predict, train_head


def locate_export(path: Path) -> Path:
    """An export folder, or a pipeline output folder holding one under ``export/``."""
    for candidate in (path, path / "export"):
        if (candidate / "dataset_dict.json").is_file():
            return candidate
    raise DataError(
        f"{path}: no exported dataset here (expected dataset_dict.json, or export/ inside a run folder)"
    )


def export_buckets(folder: Path, names: list[str]) -> list[str] | None:
    """Each class's bucket as the pipeline recorded it in ``export.json`` (counted before
    rebalancing); None for an export without them."""
    meta = folder / "export.json"
    recorded = json.loads(meta.read_text()).get("class_buckets") if meta.is_file() else None
    if not recorded:
        return None
    missing = [name for name in names if name not in recorded]
    if missing:
        raise DataError(f"{meta}: class_buckets lacks {missing[:5]}; re-export the dataset")
    return [recorded[name] for name in names]


def _features(split: Any, image_size: int) -> np.ndarray:
    if "embedding" in split.column_names:
        return np.asarray(split["embedding"], dtype=np.float32)
    pixels = np.empty((split.num_rows, image_size * image_size), dtype=np.uint8)
    for row, image in enumerate(split["image"]):
        pixels[row] = np.asarray(image.convert("L").resize((image_size, image_size))).reshape(-1)
    return pixels


def train_on_export(
    path: Path,
    config: HeadConfig,
    *,
    checkpoint: Path | None = None,
    dim: int = 64,
    image_size: int = 28,
    zero_shot_encoder: str | None = None,
) -> dict[str, Any]:
    """Train a head on the export's train split and score it on its test split, per bucket.

    Features: the ``embedding`` column when the export has one, else grey pixels projected on the
    training split's top-``dim`` PCA axes (pixels_pca). Buckets are the ones the export recorded
    (counted before rebalancing), else from the training counts.
    ``zero_shot_encoder`` (an encoder spec string) starts the probe from that CLIP model's zero-shot
    classifier over the class names (REAL-Linear).
    """
    import datasets

    folder = locate_export(path)
    splits = datasets.load_from_disk(str(folder))
    if "train" not in splits or "test" not in splits:
        raise DataError(f"{folder}: needs a train and a test split; export with a test input")
    train, test = splits["train"], splits["test"]
    if "label" not in train.column_names:
        raise DataError(f"{folder}: rebalance train needs a classification export (a 'label' column)")
    names = train.features["label"].names
    train_x, test_x = _features(train, image_size), _features(test, image_size)
    encoder = "embedding column"
    if "embedding" not in train.column_names:
        train_x, test_x, encoder = (
            pca_project(train_x, dim),
            pca_project(test_x, dim, fit_on=train_x),
            "pixels_pca",
        )
    zero_shot = None
    if zero_shot_encoder is not None:
        from rebalance.domain.text import readable
        from rebalance.models.encoders import text_queries

        if "embedding" not in train.column_names:
            raise DataError(f"{folder}: a zero-shot start needs the export's CLIP `embedding` column")
        zero_shot = text_queries(
            [readable(n) for n in names], ("a photo of a {}.",), zero_shot_encoder, config.device
        )
        if zero_shot.shape[1] != train_x.shape[1]:
            raise DataError(
                f"{zero_shot_encoder!r} embeds text in {zero_shot.shape[1]} dims but the export's embeddings have "
                f"{train_x.shape[1]}: name the encoder that made them"
            )
        encoder = f"{encoder} (zero-shot start: {zero_shot_encoder})"
    labels = np.asarray(train["label"])
    factors = np.asarray(train["repeat_factor"]) if "repeat_factor" in train.column_names else None
    head, history = train_head(
        train_x,
        labels,
        len(names),
        config,
        repeat_factors=factors,
        checkpoint=checkpoint,
        zero_shot=zero_shot,
    )
    buckets = export_buckets(folder, names) or frequency_buckets(np.bincount(labels, minlength=len(names)))
    metrics = classification_metrics(predict(head, test_x), np.asarray(test["label"]), names, buckets)
    return {
        **metrics,
        "config": {**vars(config), "device": str(resolve_device(config.device))},
        "encoder": encoder,
        "dataset": str(folder),
        "train_samples": train.num_rows,
        "test_samples": test.num_rows,
        "loss_per_epoch": [round(v, 6) for v in history],
    }
