from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rebalance.errors import DataError, RebalanceError
from rebalance.io.references import ImageRef
from rebalance.train.cnn import CNNConfig, SmallCNN, load_pixels, train_cnn
from rebalance.train.trainer import HeadConfig


def _stripes(count: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Class 0: horizontal stripes; class 1: vertical stripes; on noise (flips keep the classes apart)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    pixels = rng.integers(0, 60, size=(count, 1, 16, 16)).astype(np.uint8)
    for row, label in enumerate(labels):
        if label == 0:
            pixels[row, 0, ::2, :] += 150
        else:
            pixels[row, 0, :, ::2] += 150
    return torch.from_numpy(pixels), labels


SMALL = CNNConfig(image_size=16, channels=1, width=4)


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3)])
def test_small_cnn_gives_one_logit_per_class(size: int, channels: int) -> None:
    model = SmallCNN(num_classes=7, channels=channels, width=8)
    assert model(torch.zeros(5, channels, size, size)).shape == (5, 7)


def test_cnn_learns_a_separable_problem_and_is_seeded() -> None:
    pixels, labels = _stripes(64, seed=0)
    config = HeadConfig(epochs=6, batch_size=16, lr=0.01, seed=3, device="cpu")
    trained = train_cnn(pixels, labels, 2, config, SMALL)
    test_pixels, test_labels = _stripes(40, seed=1)
    assert (trained.predict(test_pixels) == test_labels).mean() == 1.0
    assert len(trained.history) == 6 and trained.history[-1] < trained.history[0]
    again = train_cnn(pixels, labels, 2, config, SMALL)
    for mine, theirs in zip(
        trained.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs)
    other = train_cnn(pixels, labels, 2, HeadConfig(epochs=6, batch_size=16, lr=0.01, seed=4), SMALL)
    assert not torch.equal(other.model.classifier.weight, trained.model.classifier.weight)


def test_crt_retrains_only_the_classifier() -> None:
    pixels, labels = _stripes(48, seed=0)
    plain = train_cnn(pixels, labels, 2, HeadConfig(epochs=2, batch_size=16, seed=0), SMALL)
    crt = train_cnn(pixels, labels, 2, HeadConfig(epochs=2, batch_size=16, seed=0, crt_epochs=3), SMALL)
    assert len(crt.history) == 5
    for name, value in plain.model.features.state_dict().items():
        assert torch.equal(value, crt.model.features.state_dict()[name])
    assert not torch.equal(plain.model.classifier.weight, crt.model.classifier.weight)


def test_repeat_factor_sampler_needs_factors_and_draws_by_them() -> None:
    pixels, labels = _stripes(32, seed=0)
    with pytest.raises(RebalanceError, match="needs repeat factors"):
        train_cnn(pixels, labels, 2, HeadConfig(sampler="repeat_factor", epochs=1), SMALL)
    # Class 1 repeated 3×: an epoch has 16 + 48 = 64 draws, so 4 batches of 16 instead of 2.
    factors = np.where(labels == 1, 3.0, 1.0)
    trained = train_cnn(
        pixels, labels, 2, HeadConfig(sampler="repeat_factor", epochs=1, batch_size=16), SMALL, factors
    )
    assert len(trained.history) == 1


def test_load_pixels_resizes_converts_and_rejects_corrupt_files(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    grey = load_pixels([ImageRef(tmp_path / "red.png"), ImageRef(tmp_path / "grey.png")], 28, 1)
    assert grey.shape == (2, 1, 28, 28) and grey.dtype == torch.uint8
    assert int(grey[0, 0, 5, 5]) == 76 and int(grey[1, 0, 0, 0]) == 128  # ITU-R 601 luma of pure red
    rgb = load_pixels([ImageRef(tmp_path / "red.png")], 32, 3)
    assert rgb.shape == (1, 3, 32, 32) and rgb[0, :, 3, 3].tolist() == [255, 0, 0]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_pixels([ImageRef(tmp_path / "broken.png")], 28, 1)
