"""Other projects' code, transcribed: what a test checks rebalance against and a benchmark times it beside.

``benchmarks/bench_sampling.py`` imports this module too (tests never import a benchmark).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def mmengine_repeat_factors(image_categories: list[list[int]], repeat_thr: float) -> list[float]:
    """mmengine ClassBalancedDataset._get_repeat_factors, as a plain loop over images.

    The same formula as detectron2's ``repeat_factors_from_category_frequency``: with f_c the
    fraction of images that contain category c, r_c = max(1, sqrt(t / f_c)) and an image's factor
    is the largest r_c of its categories (1 for an image without any).
    """
    category_freq: dict[int, float] = defaultdict(float)
    num_images = len(image_categories)
    for cat_ids in image_categories:
        for cat_id in set(cat_ids):
            category_freq[cat_id] += 1
    for k, v in category_freq.items():
        category_freq[k] = v / num_images
    category_repeat = {
        cat_id: max(1.0, math.sqrt(repeat_thr / freq)) for cat_id, freq in category_freq.items()
    }
    repeat_factors_out = []
    for cat_ids in image_categories:
        factor = 1.0
        if len(cat_ids) != 0:
            factor = max({category_repeat[cat_id] for cat_id in set(cat_ids)})
        repeat_factors_out.append(factor)
    return repeat_factors_out


def lvis_like_labels(num_images: int, num_categories: int, seed: int) -> list[list[int]]:
    """Synthetic per-image category lists with an LVIS-like long tail: Zipf(1.1) category
    popularity, 1 + Poisson(6) annotations per image."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_categories + 1) ** 1.1
    lengths = 1 + rng.poisson(6, num_images)
    flat = rng.choice(num_categories, size=int(lengths.sum()), p=popularity / popularity.sum())
    splits = np.cumsum(lengths)[:-1]
    return [chunk.tolist() for chunk in np.split(flat, splits)]
