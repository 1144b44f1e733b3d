"""Peak memory of building a pool index from float16 embeddings on disk, beside plain FAISS.

Writes an N × 512 float16 pool (random unit directions, 2 GB at the default 2M rows) as one .npy,
then, each in a fresh process so peak RSS is its own:
  - rebalance's `build_index` step on the memory-mapped embeddings (IVF-PQ, `max_memory_gb`),
    which trains on a seeded sample and adds a chunk at a time;
  - the same factory with FAISS directly, the way its tutorials do it: load the array, convert it
    to float32, normalise, train, add (the baseline).
Prints each one's wall time and peak RSS, and how often a pool vector finds itself (recall).

Usage: python benchmarks/bench_index_memory.py [--rows 2000000] [--factory IVF4096,PQ64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
from pathlib import Path
kind, folder, factory = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
if kind == "rebalance":
    from rebalance.domain.artifacts import Embeddings
    from rebalance.steps.index import build_index
    vectors = np.load(folder / "pool.npy", mmap_mode="r")
    index = build_index(Embeddings(np.arange(len(vectors)), vectors, "bench"), factory=factory, max_memory_gb=2.0).index
else:
    import faiss
    vectors = np.load(folder / "pool.npy").astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    lists = int(factory.split(",")[0].removeprefix("IVF"))
    sample = min(len(vectors), max(40 * lists, 1 << 16))  # FAISS's 39-per-centroid guideline
    index.train(vectors[np.sort(rng.choice(len(vectors), size=sample, replace=False))])
    index.add(vectors)
import faiss
queries = np.load(folder / "queries.npy")
index.nprobe = 64
_, rows = index.search(queries, 10)
np.save(folder / f"{kind}-rows.npy", rows)
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", default="IVF4096,PQ64")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as work:
        folder = Path(work)
        rng = np.random.default_rng(0)
        pool = np.lib.format.open_memmap(folder / "pool.npy", "w+", np.float16, (args.rows, args.dim))
        for start in range(0, args.rows, 1 << 18):
            block = rng.standard_normal((min(1 << 18, args.rows - start), args.dim), dtype=np.float32)
            pool[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        pool.flush()
        del pool
        np.save(folder / "queries.npy", np.load(folder / "pool.npy", mmap_mode="r")[:100].astype(np.float32))
        print(
            f"pool: {args.rows:,} × {args.dim} float16 ({args.rows * args.dim * 2 / 2**30:.1f} GiB), {args.factory}"
        )
        results = {}
        for kind in ("faiss", "rebalance"):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, kind, str(folder), args.factory],
                check=True,
                capture_output=True,
                text=True,
            )
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
        base, ours = results["faiss"], results["rebalance"]
        print(
            f"plain FAISS (load, float32, train, add): {base['seconds']:7.1f} s, peak RSS {base['peak_gb']:5.2f} GB  (baseline)"
        )
        print(
            f"rebalance build_index (memory map, chunks): {ours['seconds']:7.1f} s, peak RSS {ours['peak_gb']:5.2f} GB"
            f"  -> {base['peak_gb'] / ours['peak_gb']:.1f}x less memory, {base['seconds'] / ours['seconds']:.2f}x the speed"
        )
        # The queries are the pool's first 100 rows: each should find itself.
        for kind in ("faiss", "rebalance"):
            rows = np.load(folder / f"{kind}-rows.npy")
            found = np.mean([row in rows[row] for row in range(len(rows))])
            print(f"{kind}: a pool vector finds itself in its top 10 for {found:.0%} of 100 queries")


if __name__ == "__main__":
    main()
