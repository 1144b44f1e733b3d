"""Repeat-factor and class-balanced sampling: vectorised factors, epoch indices and a torch Sampler.

Repeat-factor sampling (RFS; Gupta, Dollár and Girshick, "LVIS", CVPR 2019): for category c let
f_c be the fraction of training images that contain c. The category repeat factor is
``r_c = max(1, sqrt(t / f_c))`` and an image's factor is ``r_i = max_{c in i} r_c`` (1 for an image
without annotations); t is the threshold (LVIS: 0.001).

Instance-aware RFS (IRFS; Yu et al., 2023) uses ``f_c = sqrt(f_img(c) · f_inst(c))`` where
f_inst(c) is c's share of all instances.

Class-balanced, square-root and power-q sampling (Kang et al., "Decoupling Representation and
Classifier", ICLR 2020) give class c the sampling probability p_c = n_c^q / Σ_k n_k^q (q = 0
class-balanced, q = 0.5 square-root, q = 1 instance-balanced). As repeat factors: each image of c
gets N · p_c / n_c, so an epoch keeps its size N and class c gets N · p_c draws in expectation.

Rounding a factor to a whole number of copies per epoch:
- ``stochastic``: ``floor(r) + Bernoulli(r - floor(r))``, redrawn every epoch, as detectron2's
  ``RepeatFactorTrainingSampler._get_epoch_indices``; the expected count equals r.
- ``ceil``: ``ceil(r)`` copies, fixed, as mmengine/mmdet's ``ClassBalancedDataset``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numba
import numpy as np
import pyarrow as pa
import torch.utils.data

Method = Literal["rfs", "irfs"]
Rounding = Literal["stochastic", "ceil"]


def _flatten(
    image_categories: Sequence[Sequence[int]] | pa.ListArray | pa.ChunkedArray,
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets with n+1 entries, flat category ids): one C-level conversion, no Python loop."""
    array = (
        image_categories
        if isinstance(image_categories, (pa.ListArray, pa.ChunkedArray))
        else pa.array(image_categories, pa.list_(pa.int64()))
    )
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = array.offsets.to_numpy() - array.offsets[0].as_py()
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return offsets.astype(np.int64, copy=False), values


def repeat_factors(
    image_categories: Sequence[Sequence[int]] | pa.ListArray | pa.ChunkedArray,
    *,
    threshold: float = 0.001,
    method: Method = "rfs",
    instance_counts: np.ndarray | None = None,
) -> np.ndarray:
    """Per-image repeat factors for RFS or IRFS (formulas in the module docstring).

    Args:
        image_categories: for each image, the category ids of its annotations (one entry per
            instance; repeats within an image are allowed and count as instances).
        threshold: t; categories in fewer than a fraction t of images are oversampled.
        method: ``"rfs"`` or ``"irfs"``.
        instance_counts: for IRFS, instances per category id (index = id) when
            ``image_categories`` lists each category once per image; by default instances are
            counted from ``image_categories``.

    Returns:
        float64 array, one factor ≥ 1 per image.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    offsets, values = _flatten(image_categories)
    num_images = len(offsets) - 1
    if values.size == 0:
        return np.ones(num_images)
    if values.min() < 0:
        raise ValueError("category ids must be non-negative integers")
    num_categories = int(values.max()) + 1
    frequency = _images_per_category(offsets, values, num_categories) / num_images
    if method == "irfs":
        instances = (
            np.bincount(values, minlength=num_categories)
            if instance_counts is None
            else np.asarray(instance_counts, dtype=np.float64)[:num_categories]
        )
        frequency = np.sqrt(frequency * instances / instances.sum())
    elif method != "rfs":
        raise ValueError(f"unknown method {method!r}; allowed: 'rfs', 'irfs'")
    with np.errstate(divide="ignore"):  # a category in no image has f = 0; no image uses its factor
        category_factor = np.maximum(1.0, np.sqrt(threshold / frequency))
    return _max_per_image(offsets, values, category_factor)


# Compiled loops (numba) rather than numpy: both reductions are one pass over the annotations with a
# per-category "last image seen" stamp, where numpy would need a sort to deduplicate (image,
# category) pairs and a reduceat; see benchmarks/bench_sampling.py for the figures.
@numba.njit(cache=True, nogil=True)
def _images_per_category(offsets: np.ndarray, values: np.ndarray, num_categories: int) -> np.ndarray:
    """How many distinct images contain each category (a category repeated in an image counts once)."""
    counts = np.zeros(num_categories, dtype=np.int64)
    last_image = np.full(num_categories, -1, dtype=np.int64)
    for image in range(offsets.size - 1):
        for position in range(offsets[image], offsets[image + 1]):
            category = values[position]
            counts[category] += last_image[category] != image  # branchless: 2x faster here
            last_image[category] = image
    return counts


@numba.njit(cache=True, nogil=True)
def _max_per_image(offsets: np.ndarray, values: np.ndarray, category_factor: np.ndarray) -> np.ndarray:
    """r_i = max over the image's categories of r_c, and 1 for an image without annotations."""
    factors = np.empty(offsets.size - 1, dtype=np.float64)
    for image in range(offsets.size - 1):
        largest = 1.0
        for position in range(offsets[image], offsets[image + 1]):
            factor = category_factor[values[position]]
            if factor > largest:
                largest = factor
        factors[image] = largest
    return factors


def class_balanced_factors(labels: Sequence[int] | np.ndarray, *, power: float = 0.0) -> np.ndarray:
    """Per-image factors N · p_c / n_c for power-q sampling (q = 0 class-balanced, 0.5 square-root)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return np.ones(0)
    counts = np.bincount(labels)
    weights = counts[labels].astype(np.float64) ** (power - 1.0)
    return weights * (labels.size / weights.sum())


def epoch_indices(
    factors: np.ndarray, *, seed: int, epoch: int = 0, rounding: Rounding = "stochastic", shuffle: bool = True
) -> np.ndarray:
    """The image indices of one epoch, each repeated per its rounded factor.

    Randomness comes only from ``(seed, epoch)``: the same pair always gives the same indices.
    """
    factors = np.asarray(factors, dtype=np.float64)
    rng = np.random.default_rng([seed, epoch])
    if rounding == "stochastic":
        whole = np.floor(factors)
        copies = whole + (rng.random(factors.size) < factors - whole)
    elif rounding == "ceil":
        copies = np.ceil(factors)
    else:
        raise ValueError(f"unknown rounding {rounding!r}; allowed: 'stochastic', 'ceil'")
    indices = np.repeat(np.arange(factors.size, dtype=np.int64), copies.astype(np.int64))
    return rng.permutation(indices) if shuffle else indices


class RepeatFactorSampler(torch.utils.data.Sampler[int]):
    """A ``torch.utils.data.Sampler`` over repeat factors, sharded by rank.

    Call ``set_epoch(e)`` before each epoch (as with ``DistributedSampler``); every rank draws the
    same epoch indices from ``(seed, epoch)`` and takes every ``world_size``-th one from ``rank``.
    """

    def __init__(
        self,
        factors: Sequence[float] | np.ndarray,
        *,
        seed: int = 0,
        rounding: Rounding = "stochastic",
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.factors = np.asarray(factors, dtype=np.float64)
        self.seed, self.rounding, self.shuffle = seed, rounding, shuffle
        self.rank, self.world_size = rank, world_size
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        indices = epoch_indices(
            self.factors, seed=self.seed, epoch=epoch, rounding=self.rounding, shuffle=self.shuffle
        )
        self._indices = indices[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices.tolist())

    def __len__(self) -> int:
        return len(self._indices)
