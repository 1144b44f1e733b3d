from __future__ import annotations

import math

import numpy as np
import pytest

from rebalance.methods.sampling import (
    RepeatFactorSampler,
    class_balanced_factors,
    epoch_indices,
    repeat_factors,
)
from tests.reference import lvis_like_labels, mmengine_repeat_factors

# Five images; image 3 has two instances of category 2, image 4 has no annotation.
FIVE = [[0], [0, 1], [0], [2, 2], []]


def test_hand_computed_rfs_factors() -> None:
    # t = 0.5. Images containing each category: c0 in 3 of 5, c1 in 1 of 5, c2 in 1 of 5.
    #   r_c0 = max(1, sqrt(0.5 / 0.6)) = 1          (0.5 / 0.6 < 1)
    #   r_c1 = r_c2 = max(1, sqrt(0.5 / 0.2)) = sqrt(2.5) = 1.5811...
    # r_i = max over the image's categories, 1 for the empty image.
    expected = [1.0, math.sqrt(2.5), 1.0, math.sqrt(2.5), 1.0]
    np.testing.assert_allclose(repeat_factors(FIVE, threshold=0.5), expected, rtol=1e-15)


def test_hand_computed_irfs_factors() -> None:
    # Instances: c0 3, c1 1, c2 2 of 6. f_c = sqrt(f_img · f_inst):
    #   c0: sqrt(0.6 · 3/6) = 0.5477 -> sqrt(0.5 / 0.5477) = 0.955 -> r = 1
    #   c1: sqrt(0.2 · 1/6) = 0.1826 -> r = sqrt(0.5 / 0.1826) = 1.6549
    #   c2: sqrt(0.2 · 2/6) = 0.2582 -> r = sqrt(0.5 / 0.2582) = 1.3916
    f_c1, f_c2 = math.sqrt(0.2 / 6), math.sqrt(0.2 * 2 / 6)
    expected = [1.0, math.sqrt(0.5 / f_c1), 1.0, math.sqrt(0.5 / f_c2), 1.0]
    np.testing.assert_allclose(repeat_factors(FIVE, threshold=0.5, method="irfs"), expected, rtol=1e-12)
    # Given per-category instance counts, the lists may hold each category once per image.
    once = [[0], [0, 1], [0], [2], []]
    np.testing.assert_allclose(
        repeat_factors(once, threshold=0.5, method="irfs", instance_counts=np.array([3, 1, 2])),
        expected,
        rtol=1e-12,
    )


def test_identical_to_mmengine_and_detectron2_formula() -> None:
    labels = lvis_like_labels(20_000, 300, seed=1)
    assert np.array_equal(repeat_factors(labels, threshold=0.001), mmengine_repeat_factors(labels, 0.001))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(FIVE, threshold=0)
    with pytest.raises(ValueError, match="non-negative"):
        repeat_factors([[-1]])
    with pytest.raises(ValueError, match="allowed: 'rfs', 'irfs'"):
        repeat_factors(FIVE, method="lvis")  # type: ignore[arg-type]
    assert repeat_factors([[], []]).tolist() == [1.0, 1.0]


def test_stochastic_rounding_repeats_each_image_its_factor_on_average() -> None:
    factors = np.array([1.0, 1.3, 2.7, 0.4, 3.0])
    epochs = 4000
    counts = sum(np.bincount(epoch_indices(factors, seed=7, epoch=e), minlength=5) for e in range(epochs))
    # Each count per epoch is floor(r) + Bernoulli(frac): standard error sqrt(frac (1 - frac) / epochs).
    frac = factors - np.floor(factors)
    tolerance = 5 * np.sqrt(frac * (1 - frac) / epochs) + 1e-12
    assert np.all(np.abs(counts / epochs - factors) <= tolerance)
    assert np.array_equal(epoch_indices(factors, seed=7, epoch=3), epoch_indices(factors, seed=7, epoch=3))
    assert not np.array_equal(
        epoch_indices(factors, seed=7, epoch=3), epoch_indices(factors, seed=7, epoch=4)
    )


def test_ceil_rounding_matches_mmengine_expansion() -> None:
    factors = np.array([1.0, 1.3, 2.7, 3.0])
    expanded = epoch_indices(factors, seed=0, rounding="ceil", shuffle=False)
    # mmengine: repeat_indices.extend([index] * math.ceil(factor))
    reference = [i for i, f in enumerate(factors) for _ in range(math.ceil(f))]
    assert expanded.tolist() == reference


def test_class_balanced_and_square_root_shares() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    balanced = np.bincount(labels, weights=class_balanced_factors(labels, power=0.0))
    np.testing.assert_allclose(balanced, [100 / 3] * 3)
    root = np.bincount(labels, weights=class_balanced_factors(labels, power=0.5))
    np.testing.assert_allclose(root, 100 * np.sqrt([90, 9, 1]) / np.sqrt([90, 9, 1]).sum())
    np.testing.assert_allclose(class_balanced_factors(labels, power=1.0), 1.0)


def test_sampler_shards_one_epoch_across_ranks() -> None:
    factors = np.array([1.0, 2.5, 0.5, 4.0, 1.2])
    ranks = [RepeatFactorSampler(factors, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(5)
    together = sorted(list(ranks[0]) + list(ranks[1]))
    assert together == sorted(epoch_indices(factors, seed=3, epoch=5).tolist())
    assert len(ranks[0]) == len(list(ranks[0]))
    import torch.utils.data

    loader = torch.utils.data.DataLoader(list(range(5)), sampler=ranks[0], batch_size=2)
    assert sum(len(batch) for batch in loader) == len(ranks[0])
    with pytest.raises(ValueError, match="rank"):
        RepeatFactorSampler(factors, rank=2, world_size=2)
