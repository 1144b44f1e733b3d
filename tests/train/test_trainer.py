from __future__ import annotations

import numpy as np
import pytest
import torch

from rebalance.train.trainer import HeadConfig, predict, train_head


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 8)) * 3
    labels = np.repeat([0, 1, 2], [200, 40, 8])
    return (centers[labels] + rng.standard_normal((len(labels), 8))).astype(np.float32), labels


def test_learns_separable_blobs_and_is_seeded() -> None:
    x, y = blobs()
    head, history = train_head(x, y, 3, HeadConfig(epochs=20, batch_size=32, seed=1))
    assert (predict(head, x) == y).mean() > 0.95 and history[-1] < history[0]
    again, _ = train_head(x, y, 3, HeadConfig(epochs=20, batch_size=32, seed=1))
    assert torch.equal(head.classifier.weight, again.classifier.weight)
    other, _ = train_head(x, y, 3, HeadConfig(epochs=20, batch_size=32, seed=2))
    assert not torch.equal(head.classifier.weight, other.classifier.weight)


def test_repeat_factor_sampler_needs_factors_and_warns_on_double_correction() -> None:
    x, y = blobs()
    with pytest.raises(ValueError, match="needs repeat factors"):
        train_head(x, y, 3, HeadConfig(sampler="repeat_factor", epochs=1))
    factors = np.where(y == 2, 5.0, 1.0)
    with pytest.warns(UserWarning, match="corrected twice"):
        train_head(
            x,
            y,
            3,
            HeadConfig(sampler="repeat_factor", loss="balanced_softmax", epochs=1),
            repeat_factors=factors,
        )


def test_mlp_head_and_tau_normalisation() -> None:
    x, y = blobs()
    head, _ = train_head(x, y, 3, HeadConfig(hidden=16, epochs=5, tau_norm=1.0))
    norms = head.classifier.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5) and head.classifier.bias.abs().sum() == 0
