"""A small CNN trained from scratch on the images: the setting where new pixels can matter.

A linear probe on fixed features can only re-weigh what the features already separate; a network
that learns its representation from the training images gains from every new real image a
retrieval stage adds. This is the CIFAR-LT-style end-to-end baseline of the long-tail literature
(Cao et al., LDAM, NeurIPS 2019; Menon et al., logit adjustment, ICLR 2021), scaled to run on a
CPU in minutes at 28–32 px: three conv–BN–ReLU blocks (width w, 2w, 4w), global average pooling
and a linear classifier, trained by the one loop (``rebalance.train.loop.fit``) with AdamW, random
crop (4 px padding) and horizontal-flip augmentation, the same losses and samplers as the probe
trainer, and cRT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rebalance.core.device import resolve_device
from rebalance.errors import DataError
from rebalance.io.references import ImageRef, open_image
from rebalance.methods.sampling import class_balanced_factors
from rebalance.train.loop import Phase, TensorRows, fit
from rebalance.train.losses import make_loss
from rebalance.train.trainer import HeadConfig, require_factors, resumable

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
    checkpoint: Path | None = None,
) -> TrainedCNN:
    """Train a ``SmallCNN`` from scratch on uint8 ``pixels`` with class positions ``labels``.

    One ``fit`` with the probe's epoch orders (a seeded shuffle, or repeat-factor draws with
    stochastic rounding) and ``config.lr_schedule`` (the step's default is cosine decay from
    ``config.lr`` over all steps). ``crt_epochs`` > 0 adds a phase that re-initialises the
    classifier and trains it alone on the frozen network's (un-augmented) features with
    class-balanced sampling (cRT, Kang et al., ICLR 2020). Seeded: the same inputs and config give
    the same weights on the same device; with ``checkpoint`` a killed run resumes after its last
    finished epoch.
    """
    if config.sampler == "repeat_factor":
        require_factors(repeat_factors)
    device = resolve_device(config.device)
    targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    counts = torch.bincount(targets, minlength=num_classes).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SmallCNN(num_classes, cnn.channels, cnn.width).to(device)

    def prepared(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _augment(_scaled(inputs), generator) if cnn.augment else _scaled(inputs)

    main = Phase.of(
        config,
        "main",
        model,
        model.parameters(),
        TensorRows(pixels, targets),
        make_loss(config.loss, counts, tau=config.tau, beta=config.beta, gamma=config.gamma),
        factors=repeat_factors if config.sampler == "repeat_factor" else None,
        transform=prepared,
        transform_seed=config.seed + 1,
        train_modules=[model],
    )

    def classifier_retraining() -> Phase:
        """cRT's phase, built once the main phase is done: a fresh classifier on frozen features."""
        model.eval()
        with torch.no_grad():
            features = torch.cat(
                [
                    model.features(_scaled(pixels[start : start + 512]).to(device))
                    for start in range(0, len(pixels), 512)
                ]
            )

        def fresh_classifier() -> None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + 2)
                model.classifier.reset_parameters()

        return Phase.of(
            config,
            "crt",
            model.classifier,
            model.classifier.parameters(),
            TensorRows(features, targets),
            make_loss("ce", counts),
            epochs=config.crt_epochs,
            schedule="constant",  # a short re-fit of one layer, at a constant rate (as Kang et al.)
            factors=class_balanced_factors(targets.numpy(), power=0.0),
            setup=fresh_classifier,
            autocast=False,
        )

    phases = [main, classifier_retraining] if config.crt_epochs else [main]
    run = {**resumable(config), **dataclasses.asdict(cnn)}
    history = fit(model, phases, device=device, checkpoint=checkpoint, run=run)
    return TrainedCNN(model.cpu().eval(), history)


def _scaled(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255.0


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random crop of the zero-padded image (one offset per batch) and a per-image horizontal flip."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    dy, dx = torch.randint(0, 2 * PAD + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]
