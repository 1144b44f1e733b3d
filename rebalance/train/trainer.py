"""Train a linear or small MLP head on fixed features, seeded, on CUDA when present."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rebalance.core.device import resolve_device
from rebalance.core.fs import write_bytes_atomic
from rebalance.errors import RebalanceError
from rebalance.methods.sampling import class_balanced_factors, epoch_indices
from rebalance.train.choices import BALANCED_LOSSES, HeadConfig
from rebalance.train.losses import Loss, make_loss, tau_normalise


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
    main = _Phase(
        "main",
        head.parameters(),
        config,
        _binary_cross_entropy
        if multilabel
        else make_loss(config.loss, counts, tau=config.tau, beta=config.beta, gamma=config.gamma),
        config.epochs,
    )
    main_factors = repeat_factors if config.sampler == "repeat_factor" else None
    history = _fit(head, main, x, y, main_factors, config, device, checkpoint, earlier=[])
    if config.crt_epochs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            head.classifier.reset_parameters()
        for parameter in head.body.parameters():
            parameter.requires_grad_(False)
        crt = _Phase("crt", head.classifier.parameters(), config, make_loss("ce", counts), config.crt_epochs)
        balanced = class_balanced_factors(y.numpy(), power=0.0)
        history += _fit(head, crt, x, y, balanced, config, device, checkpoint, earlier=history)
    head = head.cpu().eval()
    if config.tau_norm is not None:
        with torch.no_grad():
            head.classifier.weight.copy_(tau_normalise(head.classifier.weight, config.tau_norm))
            head.classifier.bias.zero_()
    return head, history


class _Phase:
    """One optimisation phase (the main training, or cRT): its optimizer, loss and length."""

    def __init__(self, name: str, parameters, config: HeadConfig, loss: Loss, epochs: int):
        self.name, self.loss, self.epochs = name, loss, epochs
        self.optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


_PHASES = ("main", "crt")


def _fit(
    head: Head,
    phase: _Phase,
    x: torch.Tensor,
    y: torch.Tensor,
    factors: np.ndarray | None,
    config: HeadConfig,
    device: torch.device,
    checkpoint: Path | None,
    earlier: list[float],
) -> list[float]:
    """Run one phase; ``earlier`` is the loss history of the phases before it (kept in checkpoints)."""
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    shuffler = torch.Generator().manual_seed(config.seed)
    history: list[float] = []
    start_epoch = 0
    saved = _load_checkpoint(checkpoint, config)
    if saved is not None and _PHASES.index(saved["phase"]) > _PHASES.index(phase.name):
        return saved["earlier"]  # this phase finished before the checkpoint; a later one loads the head
    if saved is not None and saved["phase"] == phase.name:
        head.load_state_dict(saved["head"])
        phase.optimizer.load_state_dict(saved["optimizer"])
        shuffler.set_state(saved["shuffler"])
        history, start_epoch = saved["history"], saved["epoch"] + 1
    for epoch in range(start_epoch, phase.epochs):
        order = epoch_order(len(y), factors, config.seed, epoch, shuffler)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            inputs, targets = x[batch].to(device), y[batch].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = head(inputs)
            loss = phase.loss(logits.float(), targets, epoch / max(phase.epochs, 1))
            phase.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(phase.optimizer)
            scaler.update()
            total += loss.item()
            batches += 1
        history.append(total / max(batches, 1))
        if checkpoint is not None:
            state = {
                "config": _resumable(config),
                "phase": phase.name,
                "epoch": epoch,
                "history": history,
                "earlier": earlier,
                "head": head.state_dict(),
                "optimizer": phase.optimizer.state_dict(),
                "shuffler": shuffler.get_state(),
            }
            buffer = io.BytesIO()
            torch.save(state, buffer)
            write_bytes_atomic(checkpoint, buffer.getvalue())
    return history


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


def epoch_order(
    count: int, factors: np.ndarray | None, seed: int, epoch: int, shuffler: torch.Generator
) -> torch.Tensor:
    """One epoch's sample order: repeat-factor draws (stochastic rounding, as detectron2) when
    ``factors`` are given, else every sample once in a seeded shuffle."""
    if factors is not None:
        return torch.as_tensor(epoch_indices(factors, seed=seed, epoch=epoch))
    return torch.randperm(count, generator=shuffler)


def _resumable(config: HeadConfig) -> dict:
    # Training longer is a valid resume; anything else changed means a different run.
    return {k: v for k, v in vars(config).items() if k not in ("epochs", "crt_epochs")}


def _load_checkpoint(checkpoint: Path | None, config: HeadConfig) -> dict | None:
    if checkpoint is None or not checkpoint.is_file():
        return None
    # weights_only: tensors, dicts, lists and numbers only, so a checkpoint path given on the
    # command line cannot run code when it is read (a full unpickler would run any callable in it).
    try:
        state = torch.load(checkpoint, weights_only=True)
    except pickle.UnpicklingError as error:
        raise RebalanceError(
            f"{checkpoint} holds objects other than weights and plain values, so it was not loaded "
            f"({str(error).splitlines()[0]}); pass a checkpoint written by rebalance train"
        ) from None
    if state["config"] != _resumable(config):
        raise RebalanceError(
            f"{checkpoint} was written by a run with another configuration; delete it or pass another path"
        )
    return state


def _binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, progress: float) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, targets)


@torch.no_grad()
def predict(head: Head, features: np.ndarray) -> np.ndarray:
    return head(torch.tensor(np.asarray(features, dtype=np.float32))).argmax(1).numpy()


@torch.no_grad()
def class_scores(head: Head, features: np.ndarray) -> np.ndarray:
    """Per-class sigmoid scores (samples × classes), for multi-label evaluation."""
    return torch.sigmoid(head(torch.tensor(np.asarray(features, dtype=np.float32)))).numpy()
