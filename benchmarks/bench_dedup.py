"""SemDeDup at scale on CPU: wall time and peak memory for 1M × 512 embeddings, beside the targets.

Data: a mixture of 1,000 Gaussian blobs on the 512-d sphere (1M points) with 1% planted
near-duplicates (cosine ≈ 0.9999). Prints the time of each phase, how many planted copies were
found, and the process's peak resident memory (which includes the 2 GB input itself).
Targets from the issue: ≤ 30 s and ≤ 4 GB on a 2-core CPU machine.

Usage: python benchmarks/bench_dedup.py [--rows 1000000] [--dim 512]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from rebalance.methods.dedup import semdedup


def blobs_with_copies(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    data = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):  # chunked so that generation adds little to the peak
        stop = min(rows, start + 100_000)
        data[start:stop] = centers[rng.integers(0, 1000, stop - start)]
        data[start:stop] += 0.6 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    copies = rng.choice(rows // 2, size=rows // 100, replace=False)
    targets = rows // 2 + np.arange(len(copies))
    data[targets] = data[copies] + 1e-3 * rng.standard_normal((len(copies), dim), dtype=np.float32)
    return data, copies, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--epsilon", type=float, default=0.01)
    args = parser.parse_args()
    vectors, sources, copies = blobs_with_copies(args.rows, args.dim, seed=0)
    input_gb = vectors.nbytes / 2**30
    started = time.perf_counter()
    result = semdedup(vectors, epsilon=args.epsilon, n_clusters=args.rows // 1000, seed=0)
    elapsed = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    removed = np.flatnonzero(~result.keep)
    resolved = (~result.keep[sources]) ^ (~result.keep[copies])  # exactly one copy of the pair left
    print(
        f"{args.rows:,} x {args.dim} float32 ({input_gb:.1f} GB), {args.rows // 1000} clusters, epsilon {args.epsilon}"
    )
    print(f"SemDeDup wall time:  {elapsed:6.1f} s   (target <= 30 s)")
    print(f"peak RSS:            {peak_gb:6.2f} GB  (target <= 4 GB; includes the {input_gb:.1f} GB input)")
    print(
        f"removed {len(removed):,} items; planted pairs with exactly one copy left: {int(resolved.sum()):,} of {len(copies):,}"
    )


if __name__ == "__main__":
    main()
