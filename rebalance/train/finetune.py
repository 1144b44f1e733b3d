"""Fine-tune a CLIP-style image encoder together with a linear head, end to end on images.

The same losses, samplers, seeding and loop (``rebalance.train.loop.fit``) as the probe trainer;
the encoder's learning rate is separate (``encoder_lr``, usually 10–100× smaller than the head's),
on CUDA the forward pass runs in float16 autocast over float32 weights, and DataLoader workers
decode images while the model trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader

from rebalance.core.device import resolve_device
from rebalance.io.references import ImageSource
from rebalance.models.encoders import ImageTower, open_rgb
from rebalance.train.loop import BatchDataset, Phase, fit
from rebalance.train.losses import make_loss
from rebalance.train.trainer import HeadConfig, require_factors, resumable


class ImageRows(BatchDataset):
    """Images decoded and preprocessed a batch at a time, in DataLoader workers when there are any."""

    def __init__(self, paths: Sequence[ImageSource], targets: torch.Tensor, preprocess):
        self.paths, self.targets, self.preprocess = list(paths), targets, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack([self.preprocess(open_rgb(self.paths[row])) for row in rows])
        return pixels, self.targets[rows]


@dataclasses.dataclass
class FineTuned:
    """The tuned tower and head, and the mean loss of each epoch."""

    tower: ImageTower
    head: nn.Linear
    history: list[float]

    @torch.no_grad()
    def predict(
        self, paths: Sequence[ImageSource], batch_size: int, device: torch.device, workers: int = 0
    ) -> np.ndarray:
        self.tower.module.eval()
        rows = ImageRows(paths, torch.zeros(len(paths), dtype=torch.int64), self.tower.preprocess)
        batches = BatchSampler(range(len(paths)), batch_size, drop_last=False)
        loader = DataLoader(rows, sampler=batches, batch_size=None, num_workers=workers)
        predictions = [
            self.head(_embed(self.tower, pixels.to(device))).argmax(1).cpu().numpy() for pixels, _ in loader
        ]
        return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def finetune(
    tower: ImageTower,
    paths: Sequence[ImageSource],
    labels: np.ndarray,
    num_classes: int,
    config: HeadConfig,
    *,
    encoder_lr: float = 1e-5,
    repeat_factors: np.ndarray | None = None,
    workers: int = 0,
    checkpoint: Path | None = None,
) -> FineTuned:
    """Train ``tower`` and a new linear head on the images at ``paths`` with ``labels``.

    One ``fit`` phase over both: the encoder's parameter group at ``encoder_lr``, the head's at
    ``config.lr``, under ``config.lr_schedule``. ``workers`` DataLoader processes decode and
    preprocess the next batches while the model trains; with ``checkpoint`` a killed run resumes
    after its last finished epoch.
    """
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
    both = nn.ModuleDict({"tower": tower.module, "head": head})  # one state to checkpoint
    phase = Phase.of(
        config,
        "main",
        lambda pixels: head(_embed(tower, pixels)),
        [
            {"params": [p for p in tower.module.parameters() if p.requires_grad], "lr": encoder_lr},
            {"params": head.parameters(), "lr": config.lr},
        ],
        ImageRows(paths, targets, tower.preprocess),
        make_loss(
            config.loss,
            torch.bincount(targets, minlength=num_classes).float(),
            tau=config.tau,
            beta=config.beta,
            gamma=config.gamma,
        ),
        factors=repeat_factors if config.sampler == "repeat_factor" else None,
        train_modules=[tower.module],
        workers=workers,
    )
    run = {**resumable(config), "encoder_lr": encoder_lr}
    history = fit(both, [phase], device=device, checkpoint=checkpoint, run=run)
    return FineTuned(tower, head, history)


def _embed(tower: ImageTower, pixels: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(tower.forward(pixels).float(), dim=-1)
