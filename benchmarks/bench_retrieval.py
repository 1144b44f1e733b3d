"""Retrieval at pool scale: index build, raw FAISS search, and rebalance's quota retrieval, in one run.

Data: a pool of random unit vectors (200k × 512 by default; random is fine for an index benchmark)
and one query per class for 1,000 long-tailed classes whose quotas run from 1 to 100 items. For
each index (exact ``Flat`` and the factory ``auto_factory`` picks), it prints the build time, the
time of one raw ``index.search`` at the k rebalance asks for, and the time of
``retrieve_with_quotas`` (the same search plus the one-item-one-class assignment), with their ratio
(the issue's target: overhead ≤ 1.2×). Also: the torch exact search beside FAISS Flat on the CPU
(the GPU fallback's code path), and on a CUDA machine both on the GPU.

Usage: python benchmarks/bench_retrieval.py [--pool 200000] [--dim 512] [--classes 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rebalance.methods.index import auto_factory, build_index, exact_search_torch, search
from rebalance.methods.retrieval import retrieve_with_quotas


def unit_rows(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def timed(function, repeats: int = 3):
    """Best of ``repeats`` wall times (s) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--nprobe", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pool = unit_rows(args.pool, args.dim, rng)
    queries = unit_rows(args.classes, args.dim, rng)
    quotas = np.maximum(1, np.round(100 * 0.01 ** (np.arange(args.classes) / args.classes))).astype(np.int64)
    k = int(np.ceil(quotas.max() * 2.0))  # retrieve_with_quotas' first k (oversample 2)
    print(
        f"pool {args.pool:,} x {args.dim}, {args.classes:,} classes, quotas {quotas.min()}..{quotas.max()} (sum {quotas.sum():,}), k={k}"
    )
    for factory in ("Flat", auto_factory(args.pool, args.dim)):
        build_s, index = timed(lambda f=factory: build_index(pool, f, seed=0), repeats=1)
        raw_s, _ = timed(lambda i=index: search(i, queries, k, nprobe=args.nprobe, backend="faiss"))
        ours_s, found = timed(
            lambda i=index: retrieve_with_quotas(
                lambda q, kk: search(i, q, kk, nprobe=args.nprobe, backend="faiss"),
                queries,
                np.arange(args.classes),
                quotas,
                args.pool,
            )
        )
        filled = np.bincount(found.classes, minlength=args.classes)
        print(
            f"{factory:>14}: build {build_s:6.2f} s | raw faiss search {raw_s:6.3f} s | rebalance retrieval {ours_s:6.3f} s "
            f"= {ours_s / raw_s:4.2f}x raw (target <= 1.2x) | quotas met: {bool(np.array_equal(filled, quotas))}, "
            f"items unique: {len(set(found.rows.tolist())) == len(found)}"
        )
    flat = build_index(pool, "Flat")
    faiss_s, (_, faiss_rows) = timed(lambda: search(flat, queries, k, backend="faiss"))
    torch_s, (_, torch_rows) = timed(lambda: exact_search_torch(pool, queries, k, device="cpu"))
    agree = float(np.mean(faiss_rows == torch_rows))
    print(
        f"exact search on CPU: faiss Flat {faiss_s:.3f} s | torch matmul+topk {torch_s:.3f} s | same rows: {agree:.4%}"
    )
    import torch

    if torch.cuda.is_available():
        exact_search_torch(pool, queries, k, device="cuda")  # warm-up: CUDA context and kernels
        gpu_s, _ = timed(lambda: exact_search_torch(pool, queries, k, device="cuda"))
        print(
            f"exact search on {torch.cuda.get_device_name()}: torch {gpu_s:.3f} s ({faiss_s / gpu_s:.1f}x faiss on CPU)"
        )


if __name__ == "__main__":
    main()
