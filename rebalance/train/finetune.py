"""Fine-tune a CLIP-style image encoder together with a linear head, end to end on images.

The same losses, samplers and seeding as the probe trainer (``rebalance.train.trainer``); the
encoder's learning rate is separate (``encoder_lr``, usually 10–100× smaller than the head's), and
on CUDA the forward pass runs in float16 autocast over float32 weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rebalance.core.device import resolve_device
from rebalance.models.encoders import ImageTower, open_rgb
from rebalance.train.losses import make_loss
from rebalance.train.trainer import HeadConfig, epoch_order, require_factors


@dataclasses.dataclass
class FineTuned:
    """The tuned tower and head, and the mean loss of each epoch."""

    tower: ImageTower
    head: nn.Linear
    history: list[float]

    @torch.no_grad()
    def predict(self, paths: Sequence[Path], batch_size: int, device: torch.device) -> np.ndarray:
        self.tower.module.eval()
        predictions = []
        for start in range(0, len(paths), batch_size):
            pixels = torch.stack(
                [self.tower.preprocess(open_rgb(p)) for p in paths[start : start + batch_size]]
            )
            predictions.append(self.head(_embed(self.tower, pixels.to(device))).argmax(1).cpu().numpy())
        return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def finetune(
    tower: ImageTower,
    paths: Sequence[Path],
    labels: np.ndarray,
    num_classes: int,
    config: HeadConfig,
    *,
    encoder_lr: float = 1e-5,
    repeat_factors: np.ndarray | None = None,
) -> FineTuned:
    """Train ``tower`` and a new linear head on the images at ``paths`` with ``labels``."""
    factors = repeat_factors if config.sampler == "repeat_factor" else None
    if config.sampler == "repeat_factor":
        require_factors(repeat_factors)
    device = resolve_device(config.device)
    tower.module.float().to(device).train()
    targets = torch.tensor(np.asarray(labels, dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        with torch.no_grad():
            probe = tower.preprocess(open_rgb(paths[0])).unsqueeze(0).to(device)
            dim = _embed(tower, probe).shape[1]
        head = nn.Linear(dim, num_classes).to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in tower.module.parameters() if p.requires_grad], "lr": encoder_lr},
            {"params": head.parameters(), "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    loss_fn = make_loss(
        config.loss,
        torch.bincount(targets, minlength=num_classes).float(),
        tau=config.tau,
        beta=config.beta,
        gamma=config.gamma,
    )
    shuffler = torch.Generator().manual_seed(config.seed)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    history = []
    for epoch in range(config.epochs):
        order = epoch_order(len(targets), factors, config.seed, epoch, shuffler)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            pixels = torch.stack([tower.preprocess(open_rgb(paths[i])) for i in batch.tolist()]).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = head(_embed(tower, pixels))
            loss = loss_fn(logits.float(), targets[batch].to(device), epoch / max(config.epochs, 1))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total, batches = total + loss.item(), batches + 1
        history.append(total / max(batches, 1))
    return FineTuned(tower, head, history)


def _embed(tower: ImageTower, pixels: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(tower.forward(pixels).float(), dim=-1)
