"""Training steps: a head on embeddings, a small CNN on the images, or a fine-tuned encoder; scored per bucket."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from rebalance.core.device import Device
from rebalance.core.registry import ModelRef, step
from rebalance.domain.artifacts import ConceptFrequency, Embeddings, LabeledDataset, TrainReport
from rebalance.domain.classes import class_buckets
from rebalance.errors import DataError
from rebalance.train.choices import LossName, SamplerName, ScheduleName

ClassPrior = Literal["training", "original"]


@step("train_probe", role="trains")
def train_probe(
    dataset: LabeledDataset,
    embeddings: Embeddings,
    test: LabeledDataset,
    test_embeddings: Embeddings,
    original: LabeledDataset | None = None,
    frequency: ConceptFrequency | None = None,
    *,
    init: Literal["random", "zero_shot"] = "random",
    templates: tuple[str, ...] = ("a photo of a {}.",),
    loss: LossName = "ce",
    class_prior: ClassPrior = "training",
    sampler: SamplerName = "uniform",
    hidden: NonNegativeInt = 0,
    epochs: PositiveInt = 30,
    batch_size: PositiveInt = 256,
    lr: PositiveFloat = 0.01,
    lr_schedule: ScheduleName = "constant",
    weight_decay: float = 1e-4,
    tau: float = 1.0,
    beta: float = 0.9999,
    gamma: float = 2.0,
    tau_norm: float | None = None,
    crt_epochs: NonNegativeInt = 0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> TrainReport:
    """Train a linear probe (hidden = 0) or MLP head on embeddings; report top-1 and per-bucket accuracy.

    Multi-label data (images with several classes, e.g. LVIS) trains one sigmoid per class and is
    scored by average precision per class, averaged per bucket (``metric: average_precision``).

    Buckets (rare/common/frequent) come from ``original`` (the data before rebalancing) when given,
    so a baseline and a rebalanced run are scored on the same buckets. ``sampler: repeat_factor``
    uses the dataset's repeat_factor column; a balanced loss on top of it triggers a
    double-correction warning, recorded in the report. crt_epochs > 0 then re-trains the classifier
    on frozen features with class-balanced sampling (cRT); tau_norm applies τ-normalisation.
    ``init: zero_shot`` (REAL-Linear) starts a linear probe from the zero-shot classifier of the
    encoder that made the embeddings (a CLIP-style model): its text embeddings of ``templates``
    filled with each class's most frequent caption synonym (``frequency``) or its name.

    ``class_prior`` is the class frequency a balanced loss (logit adjustment, LDAM-DRW, ...)
    corrects for: ``training``, the rows it trains on, or ``original``, the counts before
    rebalancing. Retrieved neighbours and interpolated rows sit close to the class's own examples,
    so they add support without undoing the label shift to a balanced test set; with
    ``training`` they shrink the correction as if they were new independent draws.
    """
    from rebalance.core.device import resolve_device
    from rebalance.train.metrics import classification_metrics, multilabel_metrics
    from rebalance.train.trainer import HeadConfig, class_scores, predict, train_head

    if test.class_names() != dataset.class_names():
        raise DataError("train and test splits have different classes")
    config = HeadConfig(
        loss=loss,
        sampler=sampler,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        weight_decay=weight_decay,
        tau=tau,
        beta=beta,
        gamma=gamma,
        tau_norm=tau_norm,
        crt_epochs=crt_epochs,
        device=device,
        seed=seed,
    )
    multilabel = _is_multilabel(dataset) or _is_multilabel(test)
    factors = (
        dataset.images["repeat_factor"].to_numpy() if "repeat_factor" in dataset.images.column_names else None
    )
    zero_shot = None
    if init == "zero_shot":
        from rebalance.domain.prompts import class_prompt_names
        from rebalance.models.encoders import text_queries

        zero_shot = text_queries(
            class_prompt_names(dataset, frequency), templates, embeddings.encoder, device
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head, history = train_head(
            embeddings.aligned_to(dataset.images["image_id"].to_numpy()),
            _targets(dataset, multilabel),
            len(dataset.class_names()),
            config,
            repeat_factors=factors,
            zero_shot=zero_shot,
            class_counts=_prior_counts(class_prior, original, dataset, multilabel),
        )
    test_x = test_embeddings.aligned_to(test.images["image_id"].to_numpy())
    buckets = class_buckets(
        original if original is not None else dataset,
        rare_max_images=rare_max_images,
        common_max_images=common_max_images,
    )
    if multilabel:
        metrics = multilabel_metrics(
            class_scores(head, test_x), _targets(test, True), dataset.class_names(), buckets
        )
    else:
        predictions = predict(head, test_x)
        metrics = classification_metrics(
            predictions, test.single_labels("scoring a classifier"), dataset.class_names(), buckets
        )
        metrics["test_predictions"] = predictions.tolist()
    return TrainReport(
        {
            **metrics,
            "config": {**vars(config), "class_prior": class_prior, "device": str(resolve_device(device))},
            "encoder": embeddings.encoder,
            "train_samples": dataset.num_rows,
            "test_samples": test.num_rows,
            "loss_per_epoch": [round(value, 6) for value in history],
            "warnings": [str(w.message) for w in caught],
        }
    )


def _prior_counts(
    class_prior: ClassPrior, original: LabeledDataset | None, dataset: LabeledDataset, multilabel: bool
) -> np.ndarray | None:
    """The class counts a balanced loss corrects for, or None for those of the training rows."""
    if class_prior == "training":
        return None
    if original is None:
        raise DataError(
            "class_prior: original needs the step's 'original' input (the data before rebalancing)"
        )
    if original.class_names() != dataset.class_names():
        raise DataError("class_prior: original needs 'original' to have the training data's classes")
    targets = _targets(original, multilabel)
    return targets.sum(0) if multilabel else np.bincount(targets, minlength=len(dataset.class_names()))


def _is_multilabel(dataset: LabeledDataset) -> bool:
    lengths = np.diff(dataset.category_lists().offsets.to_numpy())
    return bool(len(lengths)) and not np.all(lengths == 1)


def _targets(dataset: LabeledDataset, multilabel: bool) -> np.ndarray:
    """Class positions, or a multi-hot matrix (images × classes) for multi-label data."""
    if not multilabel:
        return dataset.single_labels("training a classifier")
    rows, classes = dataset.label_pairs()
    targets = np.zeros((dataset.num_rows, dataset.categories.num_rows), dtype=np.float32)
    targets[rows, classes] = 1
    return targets


@step("finetune_encoder", role="trains")
def finetune_encoder(
    dataset: LabeledDataset,
    test: LabeledDataset,
    original: LabeledDataset | None = None,
    *,
    encoder: Literal["open_clip", "transformers"],
    model: ModelRef,
    pretrained: ModelRef | None = None,
    loss: LossName = "ce",
    sampler: SamplerName = "uniform",
    epochs: PositiveInt = 5,
    batch_size: PositiveInt = 64,
    lr: PositiveFloat = 1e-3,
    encoder_lr: PositiveFloat = 1e-5,
    lr_schedule: ScheduleName = "constant",
    weight_decay: float = 1e-4,
    device: Device = "auto",
    loader_workers: NonNegativeInt = 0,
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> TrainReport:
    """Fine-tune the image encoder with a linear head end to end on the images; report per-bucket accuracy.

    The heavier alternative to ``train_probe``: the CLIP-style encoder (open_clip or transformers,
    by name or local path) is trained too, at ``encoder_lr``, with the same losses and samplers.
    Rows without an image file (synthetic feature rows) cannot be trained on and are left out.
    ``loader_workers`` DataLoader processes decode the next batches while the model trains (a
    few per GPU on a GPU node; 0 decodes in the training process).
    """
    from rebalance.core.device import resolve_device
    from rebalance.models.encoders import EncoderSpec, load_encoder
    from rebalance.train.finetune import finetune
    from rebalance.train.trainer import HeadConfig

    if test.class_names() != dataset.class_names():
        raise DataError("train and test splits have different classes")
    rows, labels = _rows_with_images(dataset, "fine-tuning a classifier")
    paths = [dataset.image_ref(name) for name in rows["file_name"].to_pylist()]
    factors = rows["repeat_factor"].to_numpy() if "repeat_factor" in rows.column_names else None
    config = HeadConfig(
        loss=loss,
        sampler=sampler,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        weight_decay=weight_decay,
        device=device,
        seed=seed,
    )
    spec = EncoderSpec(encoder, model, pretrained)
    tuned = finetune(
        load_encoder(spec, device=device, keep=False).image_tower(),  # trained in place: its own copy
        paths,
        labels,
        len(dataset.class_names()),
        config,
        encoder_lr=encoder_lr,
        repeat_factors=factors,
        workers=loader_workers,
    )
    test_paths = [test.image_ref(name) for name in test.images["file_name"].to_pylist()]
    predictions = tuned.predict(test_paths, batch_size, resolve_device(device), workers=loader_workers)
    metrics = _classification_scores(
        predictions, test, original if original is not None else dataset, rare_max_images, common_max_images
    )
    return TrainReport(
        {
            **metrics,
            "config": {
                **vars(config),
                "encoder_lr": encoder_lr,
                "device": str(resolve_device(device)),
                "finetuned": True,
            },
            "encoder": str(spec),
            "train_samples": len(paths),
            "test_samples": test.num_rows,
            "loss_per_epoch": [round(value, 6) for value in tuned.history],
            "warnings": [],
        }
    )


@step("train_cnn", role="trains")
def train_cnn(
    dataset: LabeledDataset,
    test: LabeledDataset,
    original: LabeledDataset | None = None,
    *,
    loss: LossName = "ce",
    sampler: SamplerName = "uniform",
    image_size: PositiveInt = 28,
    channels: Literal[1, 3] = 1,
    width: PositiveInt = 32,
    augment: bool = True,
    epochs: PositiveInt = 15,
    batch_size: PositiveInt = 128,
    lr: PositiveFloat = 2e-3,
    lr_schedule: ScheduleName = "cosine",
    weight_decay: float = 5e-4,
    tau: float = 1.0,
    beta: float = 0.9999,
    gamma: float = 2.0,
    crt_epochs: NonNegativeInt = 0,
    device: Device = "auto",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> TrainReport:
    """Train a small CNN from scratch on the images (``image_size`` px, ``channels`` 1 grey or 3 RGB);
    report top-1 and per-bucket accuracy.

    The setting where data can matter: unlike a probe on fixed features, the network learns its
    representation from the pixels, so retrieved and generated images are new evidence, not a
    re-weighting. Same losses, samplers and cRT as ``train_probe``; rows without an image file
    (synthetic feature rows) are left out. Buckets come from ``original`` when given.
    """
    from rebalance.core.device import resolve_device
    from rebalance.train.cnn import CNNConfig, load_pixels
    from rebalance.train.cnn import train_cnn as fit_cnn
    from rebalance.train.trainer import HeadConfig

    if test.class_names() != dataset.class_names():
        raise DataError("train and test splits have different classes")
    rows, labels = _rows_with_images(dataset, "training a CNN")
    factors = rows["repeat_factor"].to_numpy() if "repeat_factor" in rows.column_names else None
    config = HeadConfig(
        loss=loss,
        sampler=sampler,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        weight_decay=weight_decay,
        tau=tau,
        beta=beta,
        gamma=gamma,
        crt_epochs=crt_epochs,
        device=device,
        seed=seed,
    )
    architecture = CNNConfig(image_size=image_size, channels=channels, width=width, augment=augment)
    paths = [dataset.image_ref(name) for name in rows["file_name"].to_pylist()]
    trained = fit_cnn(
        load_pixels(paths, image_size, channels),
        labels,
        len(dataset.class_names()),
        config,
        architecture,
        repeat_factors=factors,
    )
    test_paths = [test.image_ref(name) for name in test.images["file_name"].to_pylist()]
    predictions = trained.predict(load_pixels(test_paths, image_size, channels))
    metrics = _classification_scores(
        predictions, test, original if original is not None else dataset, rare_max_images, common_max_images
    )
    return TrainReport(
        {
            **metrics,
            "config": {**vars(config), **vars(architecture), "device": str(resolve_device(device))},
            "encoder": f"cnn (trained from scratch, {image_size} px)",
            "train_samples": len(paths),
            "test_samples": test.num_rows,
            "loss_per_epoch": [round(value, 6) for value in trained.history],
            "warnings": [],
        }
    )


def _classification_scores(
    predictions: np.ndarray, test: LabeledDataset, reference: LabeledDataset, rare_max: int, common_max: int
) -> dict:
    """Per-bucket accuracy of single-label ``predictions`` on ``test``, buckets counted on
    ``reference``, and the predictions themselves (class positions, in ``test``'s row order: the
    report's gallery shows the rare-class errors)."""
    from rebalance.train.metrics import classification_metrics

    buckets = class_buckets(reference, rare_max_images=rare_max, common_max_images=common_max)
    metrics = classification_metrics(
        predictions, test.single_labels("scoring a classifier"), test.class_names(), buckets
    )
    return {**metrics, "test_predictions": np.asarray(predictions).tolist()}


def _rows_with_images(dataset: LabeledDataset, needed_for: str) -> tuple[pa.Table, np.ndarray]:
    """The image rows that have a file (synthetic feature rows have none) and their class positions."""
    with_files = pa.array([name is not None for name in dataset.images["file_name"].to_pylist()], pa.bool_())
    labels = dataset.single_labels(needed_for)[with_files.to_numpy(zero_copy_only=False)]
    return dataset.images.filter(with_files), labels
