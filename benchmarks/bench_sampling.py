"""Repeat factors for LVIS-scale data: rebalance's vectorised RFS beside a faithful loop of mmengine's.

The baseline is ``ClassBalancedDataset._get_repeat_factors`` from mmengine (identical formula to
detectron2's ``repeat_factors_from_category_frequency``), transcribed loop for loop so that
mmengine itself need not be installed. Synthetic labels: 1,000,000 images, 1,203 categories with
Zipf-distributed frequencies (LVIS-like long tail), 1 + Poisson(6) annotations per image.

Usage: python benchmarks/bench_sampling.py [--images 1000000]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np

from rebalance.methods.sampling import repeat_factors


def mmengine_repeat_factors(image_categories: list[list[int]], repeat_thr: float) -> list[float]:
    """mmengine ClassBalancedDataset._get_repeat_factors, as a plain loop over images."""
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
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_categories + 1) ** 1.1
    lengths = 1 + rng.poisson(6, num_images)
    flat = rng.choice(num_categories, size=int(lengths.sum()), p=popularity / popularity.sum())
    splits = np.cumsum(lengths)[:-1]
    return [chunk.tolist() for chunk in np.split(flat, splits)]


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--categories", type=int, default=1203)
    parser.add_argument("--threshold", type=float, default=0.001)
    args = parser.parse_args()
    labels = lvis_like_labels(args.images, args.categories, seed=0)
    import pyarrow as pa

    as_arrow = pa.array(labels, pa.list_(pa.int64()))
    annotations = sum(map(len, labels))
    print(
        f"{args.images:,} images, {args.categories:,} categories, {annotations:,} annotations, t = {args.threshold}"
    )
    loop_s, expected = best_of(1, lambda: mmengine_repeat_factors(labels, args.threshold))
    fast_s, factors = best_of(5, lambda: repeat_factors(as_arrow, threshold=args.threshold))
    identical = np.array_equal(factors, np.asarray(expected))
    print(f"mmengine ClassBalancedDataset loop:   {loop_s:8.3f} s  (baseline)")
    print(
        f"rebalance.methods.sampling.repeat_factors:     {fast_s:8.3f} s  -> {loop_s / fast_s:.0f}x faster; identical factors: {identical}"
    )
    list_s, _ = best_of(1, lambda: repeat_factors(labels, threshold=args.threshold))
    print(f"  same, from Python lists (incl. conversion): {list_s:.3f} s -> {loop_s / list_s:.0f}x")


if __name__ == "__main__":
    main()
