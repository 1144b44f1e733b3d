"""A small CNN trained from scratch on the images: the setting where new pixels can matter.

A linear probe on fixed features can only re-weigh what the features already separate; a network
that learns its representation from the training images gains from every new real image a
retrieval stage adds. This is the CIFAR-LT-style end-to-end baseline of the long-tail literature
(Cao et al., LDAM, NeurIPS 2019; Menon et al., logit adjustment, ICLR 2021), scaled to run on a
CPU in minutes at 28–32 px: three conv–BN–ReLU blocks (width w, 2w, 4w), global average pooling
and a linear classifier, trained with AdamW under a cosine schedule, random-crop (4 px padding)
and horizontal-flip augmentation, the same losses and samplers as the probe trainer, and cRT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rebalance.core.device import resolve_device
from rebalance.errors import DataError
from rebalance.io.references import ImageRef, open_image
from rebalance.methods.sampling import class_balanced_factors
from rebalance.train.losses import make_loss
from rebalance.train.trainer import HeadConfig, epoch_order, require_factors

PAD = 4  # random-crop padding in pixels, as in the CIFAR-LT recipes


class SmallCNN(nn.Module):
    """conv(w)–pool–conv(2w)–pool–conv(4w)–global average pool–linear; any input size ≥ 4 px."""

    def __init__(self, num_classes: int, channels: int, width: int):
        super().__init__()
        blocks: list[nn.Module] = []
        widths = [channels, width, 2 * width, 4 * width]
        for index, (inputs, outputs) in enumerate(zip(widths, widths[1:], strict=False)):
            blocks += [
                nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(),
            ]
            blocks.append(nn.MaxPool2d(2) if index < 2 else nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels))


def load_pixels(refs: Sequence[ImageRef], image_size: int, channels: int) -> torch.Tensor:
    """Images as a uint8 tensor (N × channels × size × size), resized with PIL's bilinear filter."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    pixels = np.empty((len(refs), image_size, image_size, channels), dtype=np.uint8)
    for row, ref in enumerate(refs):
        try:
            with open_image(ref) as image:
                converted = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot decode image {ref}: {error}; run verify_images first") from None
        pixels[row] = np.asarray(converted).reshape(image_size, image_size, channels)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """Architecture and augmentation of the CNN; losses, sampler, schedule and seed are the HeadConfig's."""

    image_size: int = 28
    channels: int = 1
    width: int = 32
    augment: bool = True


@dataclasses.dataclass
class TrainedCNN:
    model: SmallCNN
    history: list[float]

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        self.model.eval()
        device = next(self.model.parameters()).device
        logits = [
            self.model(_scaled(pixels[start : start + batch_size].to(device))).argmax(1).cpu()
            for start in range(0, len(pixels), batch_size)
        ]
        return torch.cat(logits).numpy() if logits else np.zeros(0, dtype=np.int64)


def train_cnn(
    pixels: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    config: HeadConfig,
    cnn: CNNConfig,
    repeat_factors: np.ndarray | None = None,
) -> TrainedCNN:
    """Train a ``SmallCNN`` from scratch on uint8 ``pixels`` with class positions ``labels``.

    Each epoch's order comes from the probe trainer's ``epoch_order`` (a seeded shuffle, or
    repeat-factor draws with stochastic rounding); the learning rate follows a cosine decay from
    ``config.lr`` over all steps. ``crt_epochs`` > 0 then re-initialises the classifier and trains
    it alone on the frozen network's features with class-balanced sampling (cRT, Kang et al., ICLR
    2020). Seeded: the same inputs and config give the same weights on the same device.
    """
    if config.sampler == "repeat_factor":
        require_factors(repeat_factors)
    factors = repeat_factors if config.sampler == "repeat_factor" else None
    device = resolve_device(config.device)
    targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    counts = torch.bincount(targets, minlength=num_classes).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SmallCNN(num_classes, cnn.channels, cnn.width).to(device)
    loss_fn = make_loss(config.loss, counts, tau=config.tau, beta=config.beta, gamma=config.gamma)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(targets) // config.batch_size)  # repeat-factor epochs vary a little in size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(config.epochs * steps_per_epoch, 1)
    )
    shuffler = torch.Generator().manual_seed(config.seed)
    augmenter = torch.Generator().manual_seed(config.seed + 1)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    history: list[float] = []
    for epoch in range(config.epochs):
        model.train()
        order = epoch_order(len(targets), factors, config.seed, epoch, shuffler)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            inputs = _scaled(pixels[batch])
            if cnn.augment:
                inputs = _augment(inputs, augmenter)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(inputs.to(device))
            loss = loss_fn(logits.float(), targets[batch].to(device), epoch / config.epochs)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if schedule.last_epoch < schedule.T_max:
                schedule.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / max(batches, 1))
    if config.crt_epochs:
        history += _retrain_classifier(model, pixels, targets, config, device)
    return TrainedCNN(model.cpu().eval(), history)


def _retrain_classifier(
    model: SmallCNN, pixels: torch.Tensor, targets: torch.Tensor, config: HeadConfig, device: torch.device
) -> list[float]:
    """cRT: a fresh classifier on frozen (un-augmented) features, drawn class-balanced."""
    model.eval()
    with torch.no_grad():
        features = torch.cat(
            [
                model.features(_scaled(pixels[start : start + 512]).to(device))
                for start in range(0, len(pixels), 512)
            ]
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 2)
        model.classifier.reset_parameters()
    optimizer = torch.optim.AdamW(
        model.classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    balanced = class_balanced_factors(targets.numpy(), power=0.0)
    shuffler = torch.Generator().manual_seed(config.seed + 2)
    history = []
    for epoch in range(config.crt_epochs):
        order = epoch_order(len(targets), balanced, config.seed, epoch, shuffler)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = nn.functional.cross_entropy(model.classifier(features[batch]), targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / max(batches, 1))
    return history


def _scaled(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255.0


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random crop of the zero-padded image (one offset per batch) and a per-image horizontal flip."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    dy, dx = torch.randint(0, 2 * PAD + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]
