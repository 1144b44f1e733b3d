"""SMOTE on embeddings: rebalance's faiss + numpy SMOTE beside imbalanced-learn's ``SMOTE``, same counts.

Data: long-tailed Gaussian blobs, 100k × 512 float32 over 100 classes (n_c ∝ 0.01^(c/99), the head
has ~12k samples, the tail ~120). Both methods raise every class to the median count (a dict
``sampling_strategy`` for imbalanced-learn), with k = 5 neighbours. Prints both wall times, their
ratio (the issue's target: ≥ 10×) and checks that both produce the same number of samples per
class; on a CUDA machine also the torch neighbour search on the GPU. Also times the calibrated
Gaussian sampler on the same task.

Usage: python benchmarks/bench_smote.py [--rows 100000] [--dim 512] [--classes 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rebalance.methods.feature_synthesis import calibrated_gaussian, smote
from rebalance.methods.retrieval import class_quotas


def long_tailed_blobs(rows: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = 0.01 ** (np.arange(classes) / (classes - 1))
    counts = np.maximum(2, np.round(rows * weights / weights.sum())).astype(int)
    labels = np.repeat(np.arange(classes), counts)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    x = centres[labels] + 0.5 * rng.standard_normal((len(labels), dim), dtype=np.float32)
    return x, labels


def timed(function, repeats: int = 2):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    x, labels = long_tailed_blobs(args.rows, args.dim, args.classes, seed=0)
    counts = np.bincount(labels)
    print(
        f"{len(x):,} x {args.dim} float32, {args.classes} classes ({counts.max():,} .. {counts.min()} per class)"
    )
    from imblearn.over_sampling import SMOTE

    for target in ("median", "max"):
        quotas = class_quotas(counts, target)
        strategy = {int(c): int(counts[c] + quotas[c]) for c in np.flatnonzero(quotas > 0)}
        # Best of two runs each, so that neither pays for first-call imports and thread start-up.
        ours_s, ours = timed(lambda q=quotas: smote(x, labels, q, k=5, seed=0))
        theirs_s, (_, y_res) = timed(
            lambda s=strategy: SMOTE(sampling_strategy=s, k_neighbors=5, random_state=0).fit_resample(
                x, labels
            )
        )
        same = np.array_equal(
            np.bincount(y_res[len(x) :], minlength=args.classes),
            np.bincount(ours.labels, minlength=args.classes),
        )
        print(
            f"to the {target} ({int(quotas.sum()):,} samples, {int((quotas > 0).sum())} classes): rebalance {ours_s:6.2f} s | "
            f"imbalanced-learn {theirs_s:6.2f} s | {theirs_s / ours_s:5.1f}x faster (target >= 10x) | same samples per class: {same}"
        )

        if torch.cuda.is_available():
            gpu_s, _ = timed(
                lambda q=quotas: smote(x, labels, q, k=5, seed=0, backend="torch", device="cuda")
            )
            print(
                f"    on {torch.cuda.get_device_name()}: neighbours in torch {gpu_s:6.2f} s ({theirs_s / gpu_s:5.1f}x imbalanced-learn)"
            )

    quotas = class_quotas(counts, "median")
    started = time.perf_counter()
    head = counts > np.median(counts)
    gaussian = calibrated_gaussian(x, labels, quotas, head=head, lof_neighbors=None, seed=0)
    print(
        f"calibrated Gaussian:    {time.perf_counter() - started:7.2f} s for {len(gaussian):,} samples (no LOF)"
    )


if __name__ == "__main__":
    main()
