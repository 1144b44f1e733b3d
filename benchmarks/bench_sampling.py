"""Repeat factors for LVIS-scale data: rebalance's vectorised RFS beside a faithful loop of mmengine's.

The baseline is ``ClassBalancedDataset._get_repeat_factors`` from mmengine (identical formula to
detectron2's ``repeat_factors_from_category_frequency``), transcribed loop for loop so that
mmengine itself need not be installed; the transcription lives in ``tests/reference.py``, which
tests/test_sampling.py checks rebalance against. Synthetic labels: 1,000,000 images, 1,203
categories with Zipf-distributed frequencies (LVIS-like long tail), 1 + Poisson(6) annotations per
image.

Usage: python benchmarks/bench_sampling.py [--images 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from rebalance.methods.sampling import repeat_factors

# The repository root, so that the baseline shared with the tests imports when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reference import lvis_like_labels, mmengine_repeat_factors  # noqa: E402


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
