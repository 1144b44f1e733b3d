"""Train a linear or small MLP head on fixed features, seeded, on CUDA when present."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import numpy as np
import torch
from torch import nn

from rebalance.sampling import epoch_indices
from rebalance.train.losses import BALANCED_LOSSES, LossName, make_loss, tau_normalise

Device = Literal["auto", "cpu", "cuda"]
SamplerName = Literal["uniform", "repeat_factor"]


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """How to train: loss and its options, sampler, architecture (hidden = 0 is a linear probe)."""

    loss: LossName = "ce"
    sampler: SamplerName = "uniform"
    hidden: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 1e-4
    tau: float = 1.0
    beta: float = 0.9999
    gamma: float = 2.0
    tau_norm: float | None = None
    device: Device = "auto"
    seed: int = 0


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


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: HeadConfig,
    repeat_factors: np.ndarray | None = None,
) -> tuple[Head, list[float]]:
    """Fit a head; returns it (on CPU) and the mean training loss of each epoch.

    ``sampler="repeat_factor"`` draws each epoch with ``epoch_indices(repeat_factors, seed, epoch)``
    (stochastic rounding, as detectron2); ``uniform`` shuffles every sample once per epoch.
    """
    if config.sampler == "repeat_factor":
        if repeat_factors is None:
            raise ValueError(
                "sampler 'repeat_factor' needs repeat factors; add a repeat_factors step upstream"
            )
        if config.loss in BALANCED_LOSSES and not np.allclose(repeat_factors, repeat_factors.mean()):
            warnings.warn(
                f"loss {config.loss!r} already corrects for class frequency and the repeat-factor sampler "
                "rebalances too: the tail is corrected twice",
                stacklevel=2,
            )
    device = resolve_device(config.device)
    x = torch.tensor(np.asarray(features, dtype=np.float32))  # a copy: inputs may be read-only memmaps
    y = torch.tensor(np.asarray(labels, dtype=np.int64))
    counts = torch.bincount(y, minlength=num_classes).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = Head(x.mean(0), x.std(0).clamp_min(1e-6), num_classes, config.hidden).to(device)
    loss_fn = make_loss(config.loss, counts, tau=config.tau, beta=config.beta, gamma=config.gamma)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    shuffler = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(config.epochs):
        if config.sampler == "repeat_factor":
            order = torch.as_tensor(epoch_indices(repeat_factors, seed=config.seed, epoch=epoch))
        else:
            order = torch.randperm(len(y), generator=shuffler)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            inputs, targets = x[batch].to(device), y[batch].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = head(inputs)
            loss = loss_fn(logits.float(), targets, epoch / max(config.epochs, 1))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.item()
            batches += 1
        history.append(total / max(batches, 1))
    head = head.cpu().eval()
    if config.tau_norm is not None:
        with torch.no_grad():
            head.classifier.weight.copy_(tau_normalise(head.classifier.weight, config.tau_norm))
            head.classifier.bias.zero_()
    return head, history


@torch.no_grad()
def predict(head: Head, features: np.ndarray) -> np.ndarray:
    return head(torch.tensor(np.asarray(features, dtype=np.float32))).argmax(1).numpy()
