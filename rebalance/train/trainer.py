"""Train a linear or small MLP head on fixed features, seeded, on CUDA when present."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rebalance.core.device import resolve_device
from rebalance.errors import RebalanceError
from rebalance.methods.sampling import class_balanced_factors
from rebalance.train.choices import BALANCED_LOSSES, HeadConfig
from rebalance.train.loop import Phase, TensorRows, fit
from rebalance.train.losses import make_loss, tau_normalise


class Head(nn.Module):
    """Standardise features with the training mean/std, then a linear layer or a one-hidden-layer MLP."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        dim = mean.shape[0]
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.classifier = nn.Linear(hidden or dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body((features - self.mean) / self.std))

    @torch.no_grad()
    def init_zero_shot(self, class_vectors: torch.Tensor, scale: float) -> None:
        """Start from a zero-shot classifier: logits = scale · x·t_c for each class's text vector t_c.

        The head standardises x first, so W = scale · T · diag(std) and b = scale · T·mean give the
        same logits on standardised inputs (REAL-Linear initialises its linear head this way).
        """
        if not isinstance(self.body, nn.Identity):
            raise RebalanceError("a zero-shot start needs a linear probe (hidden: 0)")
        weights = scale * class_vectors.to(self.std.dtype)
        self.classifier.weight.copy_(weights * self.std)
        self.classifier.bias.copy_(weights @ self.mean)


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: HeadConfig,
    repeat_factors: np.ndarray | None = None,
    checkpoint: Path | None = None,
    zero_shot: np.ndarray | None = None,
    zero_shot_scale: float = 100.0,
    class_counts: np.ndarray | None = None,
) -> tuple[Head, list[float]]:
    """Fit a head; returns it (on CPU) and the mean training loss of each epoch.

    ``labels``: a class position per sample, or a multi-hot matrix (samples × classes) for
    multi-label data, which trains one sigmoid per class with binary cross-entropy.

    ``sampler="repeat_factor"`` draws each epoch with ``epoch_indices(repeat_factors, seed, epoch)``
    (stochastic rounding, as detectron2); ``uniform`` shuffles every sample once per epoch. With
    ``crt_epochs`` the classifier is then re-initialised and re-trained on frozen features with
    class-balanced sampling (cRT, Kang et al., ICLR 2020). With ``checkpoint``, the state is saved
    atomically after every epoch and a run with the same configuration resumes from it.
    ``zero_shot`` (classes × dim, unit text embeddings of the class prompts) starts the linear
    head from the zero-shot classifier they define, scaled by ``zero_shot_scale`` (CLIP's 100).
    ``class_counts`` (one per class): the class frequencies the balanced losses correct for, when
    they are not those of ``labels`` (see ``train_probe``'s ``class_prior``).
    """
    if config.sampler == "repeat_factor":
        require_factors(repeat_factors)
        if config.loss in BALANCED_LOSSES and not np.allclose(repeat_factors, repeat_factors.mean()):
            warnings.warn(
                f"loss {config.loss!r} already corrects for class frequency and the repeat-factor sampler "
                "rebalances too: the tail is corrected twice",
                stacklevel=2,
            )
    device = resolve_device(config.device)
    x = torch.tensor(np.asarray(features, dtype=np.float32))  # a copy: inputs may be read-only memmaps
    multilabel = np.ndim(labels) == 2
    if multilabel and (config.loss != "ce" or config.crt_epochs):
        raise RebalanceError(
            "multi-label data (several classes an image) trains with loss 'ce' (binary cross-entropy per "
            "class) and no cRT; rebalance it with the sampler instead"
        )
    y = torch.tensor(np.asarray(labels, dtype=np.float32 if multilabel else np.int64))
    counts = loss_counts(y, num_classes, class_counts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = Head(x.mean(0), x.std(0).clamp_min(1e-6), num_classes, config.hidden)
        if zero_shot is not None:
            head.init_zero_shot(torch.tensor(np.asarray(zero_shot, dtype=np.float32)), zero_shot_scale)
        head = head.to(device)
    loss = (
        _binary_cross_entropy
        if multilabel
        else make_loss(config.loss, counts, tau=config.tau, beta=config.beta, gamma=config.gamma)
    )
    data = TensorRows(x, y)
    main = Phase.of(
        config,
        "main",
        head,
        head.parameters(),
        data,
        loss,
        factors=repeat_factors if config.sampler == "repeat_factor" else None,
    )
    phases = [main]
    if config.crt_epochs:

        def retrain_classifier() -> None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + 1)
                head.classifier.reset_parameters()
            for parameter in head.body.parameters():
                parameter.requires_grad_(False)

        phases.append(
            Phase.of(
                config,
                "crt",
                head,
                head.classifier.parameters(),
                data,
                make_loss("ce", counts),
                epochs=config.crt_epochs,
                schedule="constant",  # a short re-fit of one layer, at a constant rate (as Kang et al.)
                factors=class_balanced_factors(y.numpy(), power=0.0),
                setup=retrain_classifier,
            )
        )
    history = fit(head, phases, device=device, checkpoint=checkpoint, run=resumable(config))
    head = head.cpu().eval()
    if config.tau_norm is not None:
        with torch.no_grad():
            head.classifier.weight.copy_(tau_normalise(head.classifier.weight, config.tau_norm))
            head.classifier.bias.zero_()
    return head, history


def loss_counts(targets: torch.Tensor, num_classes: int, class_counts: np.ndarray | None) -> torch.Tensor:
    """Per-class counts for the losses: ``class_counts`` when given, else those of ``targets``."""
    if class_counts is not None:
        counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float32))
        if counts.shape != (num_classes,):
            raise RebalanceError(
                f"class_counts has shape {tuple(counts.shape)}, not one count for each of {num_classes} classes"
            )
        return counts
    return targets.sum(0) if targets.ndim == 2 else torch.bincount(targets, minlength=num_classes).float()


def require_factors(repeat_factors: np.ndarray | None) -> None:
    if repeat_factors is None:
        raise RebalanceError(
            "sampler 'repeat_factor' needs repeat factors; add a repeat_factors step upstream"
        )


def resumable(config: HeadConfig) -> dict:
    """What a checkpoint must share with a run to resume it: training longer is a valid resume;
    anything else changed means a different run."""
    return {k: v for k, v in vars(config).items() if k not in ("epochs", "crt_epochs")}


def _binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, progress: float) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, targets)


@torch.no_grad()
def predict(head: Head, features: np.ndarray) -> np.ndarray:
    return head(torch.tensor(np.asarray(features, dtype=np.float32))).argmax(1).numpy()


@torch.no_grad()
def class_scores(head: Head, features: np.ndarray) -> np.ndarray:
    """Per-class sigmoid scores (samples × classes), for multi-label evaluation."""
    return torch.sigmoid(head(torch.tensor(np.asarray(features, dtype=np.float32)))).numpy()
