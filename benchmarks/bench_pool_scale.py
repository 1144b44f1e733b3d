"""A LAION-layout pool at scale: ingest its precomputed embeddings, build the sharded index, retrieve
with quotas; beside autofaiss on the same folder with the same memory budget, in one run.

Writes an N × 512 float16 pool in the clip-retrieval layout (``img_emb/img_emb_<i>.npy`` beside
``metadata/metadata_<i>.parquet``, 1M rows a shard). The vectors are synthetic but not uniform
noise, on which no approximate index is meaningful: 1,000 concepts with Zipf frequencies, each
vector its concept's direction plus anisotropic noise (a decaying spectrum in a random basis).

Then, in a fresh process whose peak RSS is its own:
  - rebalance: ``precomputed_embeddings`` (joined by key to a pool table that stands in for
    ``ingest_webdataset``'s output), written to and read back from disk as the runner does;
    ``train_index`` on a seeded sample; ``fill_index`` shard by shard; the shards merged by
    ``VectorIndex.write_concatenated`` (on disk when the lists exceed ``--max-memory-gb``);
    ``retrieve_with_quotas`` for 1,000 class queries with long-tailed quotas;
  - autofaiss ``build_index`` on the same ``img_emb`` folder and memory budget, choosing its own
    index (it refuses scalar quantisers with the inner product), in its own virtual environment
    (it pins numpy<2):
        python -m venv .autofaiss && .autofaiss/bin/pip install autofaiss "pyarrow<16" "faiss-cpu==1.7.4"
    (autofaiss 2.18 builds OPQ indexes with an argument newer FAISS releases removed).
Recall@100 of both is measured against exact search (FAISS ``IndexFlatIP``) for the same queries.

With ``--memory-cgroup-gb X`` (as root, with a cgroup v1 memory controller) rebalance's process
runs in a memory cgroup of X GB, page cache included: finishing there shows the build fits X GB
of physical memory, where peak RSS also counts mapped file pages the kernel could have dropped.

Usage: python benchmarks/bench_pool_scale.py [--rows 10000000] [--factory IVF4096,SQ8]
       [--max-memory-gb 4] [--autofaiss-python .autofaiss/bin/python] [--pool DIR]
       [--memory-cgroup-gb 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD_ROWS = 1_000_000
CONCEPTS = 1_000

OURS = r"""
import json, sys, threading, time
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, dataclasses
def peak_rss_gb():
    # VmHWM, this process's own peak: ru_maxrss also keeps the high-water mark of the image exec
    # replaced, the benchmark's parent as copied at fork, which can be the larger one.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20
peak_kb = {"RssAnon": 0, "VmRSS": 0}
def sample_memory():
    # VmRSS (what VmHWM peaks) also counts pages of memory-mapped files (the shards, the lists
    # file), which the kernel reclaims under pressure; the process's own heap is RssAnon.
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                name = line.split(":")[0]
                if name in peak_kb:
                    peak_kb[name] = max(peak_kb[name], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=sample_memory, daemon=True).start()
anon_by_phase, rss_by_phase = {}, {}
def end_phase(name):
    anon_by_phase[name] = round(peak_kb["RssAnon"] / 2**20, 2)
    rss_by_phase[name] = round(peak_kb["VmRSS"] / 2**20, 2)
    peak_kb.update(RssAnon=0, VmRSS=0)
folder, factory, cap, shards = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
from rebalance.domain.artifacts import Embeddings, LabeledDataset, VectorIndex
from rebalance.steps.embed import precomputed_embeddings
from rebalance.steps.index import fill_index, train_index
from rebalance.methods import index as vector_index
from rebalance.methods.retrieval import retrieve_with_quotas
times = {}
started = time.perf_counter()
keys = pa.concat_arrays([pq.read_table(p, columns=["key"])["key"].combine_chunks()
                         for p in sorted((folder / "metadata").glob("metadata_*.parquet"))])
pool = LabeledDataset.unlabeled(pa.compute.binary_join_element_wise(keys, pa.scalar(".jpg"), ""), split="pool", source="pool", image_root=None)
pool = dataclasses.replace(pool, images=pool.images.append_column("key", keys))
work = folder / "rebalance"
for name in ("embedded", "trained", "merged"):
    (work / name).mkdir(parents=True, exist_ok=True)
precomputed_embeddings(pool, root=folder, encoder="synthetic").write(work / "embedded")
embeddings = Embeddings.read(work / "embedded")
times["ingest_s"] = time.perf_counter() - started
end_phase("ingest")
started = time.perf_counter()
train_index(embeddings, factory=factory, max_memory_gb=cap).write(work / "trained")
trained = VectorIndex.read(work / "trained")
times["train_s"] = time.perf_counter() - started
end_phase("train")
parts = []
for number in range(shards):
    part = work / f"part-{number}"
    part.mkdir(exist_ok=True)
    fill_index(embeddings.shard(number, shards), trained).write(part)
    parts.append(part)
end_phase("fill")
VectorIndex.write_concatenated(parts, work / "merged")
index = VectorIndex.read(work / "merged")
times["build_s"] = time.perf_counter() - started
end_phase("merge")
queries = np.load(folder / "queries.npy")
started = time.perf_counter()
_, rows = vector_index.search(index.index, queries, 100, nprobe=64)
times["search_100_s"] = time.perf_counter() - started
np.save(folder / "rebalance-rows.npy", rows)
quotas = np.maximum(1, (100 / np.arange(1, len(queries) + 1) ** 0.5).astype(int))
started = time.perf_counter()
found = retrieve_with_quotas(lambda q, k: vector_index.search(index.index, q, k, nprobe=64),
                             queries, np.arange(len(queries)), quotas, index.num_rows)
times["retrieve_s"] = time.perf_counter() - started
times["retrieved"] = len(found)
times["quota"] = int(quotas.sum())
times["lists_on_disk"] = bool(index.meta.get("lists_on_disk"))
times["peak_rss_gb"] = peak_rss_gb()
end_phase("search+retrieve")
times["peak_anon_gb"] = max(anon_by_phase.values())
times["anon_by_phase_gb"] = anon_by_phase
times["rss_by_phase_gb"] = rss_by_phase
print(json.dumps(times))
"""

AUTOFAISS = r"""
import json, sys, time
import numpy as np, faiss
from autofaiss import build_index
def peak_rss_gb():
    # VmHWM, this process's own peak: ru_maxrss also keeps the high-water mark of the image exec
    # replaced, the benchmark's parent as copied at fork, which can be the larger one.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20
folder, cap = sys.argv[1], sys.argv[2]
started = time.perf_counter()
index, _ = build_index(embeddings=folder + "/img_emb", index_path=folder + "/autofaiss.index",
                       index_infos_path=folder + "/autofaiss.json",
                       # autofaiss wants the index to leave 10% of the budget free
                       max_index_memory_usage=f"{0.85 * float(cap) * 2**30:.0f}B", current_memory_available=f"{float(cap) * 2**30:.0f}B",
                       metric_type="ip", verbose=40)
build = time.perf_counter() - started
try:
    faiss.extract_index_ivf(index).nprobe = 64  # the same probes as ours
except RuntimeError:
    pass  # autofaiss chose an index without lists (small pools): searched as it is
queries = np.load(folder + "/queries.npy")
_, rows = index.search(queries, 100)
np.save(folder + "/autofaiss-rows.npy", rows)
index_key = json.load(open(folder + "/autofaiss.json"))["index_key"]
print(json.dumps({"build_s": build, "index_key": index_key, "peak_rss_gb": peak_rss_gb()}))
"""


def concept_model(dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CONCEPTS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, CONCEPTS + 1) ** 0.8
    spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    spectrum *= np.sqrt(dim) / np.linalg.norm(spectrum)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    return centres, weights / weights.sum(), spectrum, basis


def sample(model, rng: np.random.Generator, count: int, noise: float = 0.9) -> np.ndarray:
    centres, weights, spectrum, basis = model
    concepts = rng.choice(len(centres), size=count, p=weights)
    shaped = rng.standard_normal((count, len(spectrum)), dtype=np.float32) * spectrum
    vectors = centres[concepts] + noise * (shaped @ basis) / np.sqrt(len(spectrum))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_pool(folder: Path, rows: int, dim: int) -> np.ndarray:
    """The LAION layout on disk; returns 1,000 queries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = concept_model(dim)
    (folder / "img_emb").mkdir()
    (folder / "metadata").mkdir()
    rng = np.random.default_rng(1)
    for shard, start in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - start)
        vectors = np.lib.format.open_memmap(
            folder / "img_emb" / f"img_emb_{shard}.npy", "w+", np.float16, (count, dim)
        )
        for offset in range(0, count, 1 << 17):
            block = sample(model, rng, min(1 << 17, count - offset))
            vectors[offset : offset + len(block)] = block
        vectors.flush()
        del vectors
        keys = pa.array([f"{number:09d}" for number in range(start, start + count)])
        pq.write_table(pa.table({"key": keys}), folder / "metadata" / f"metadata_{shard}.parquet")
    # Held-out samples of the same distribution, as image queries are (a class's examples).
    return sample(model, np.random.default_rng(2), CONCEPTS).astype(np.float32)


def exact_top(folder: Path, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    start = 0
    for path in sorted((folder / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1])):
        shard = np.load(path, mmap_mode="r")
        flat = faiss.IndexFlatIP(shard.shape[1])
        flat.add(np.asarray(shard, dtype=np.float32))
        scores, rows = flat.search(queries, k)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows + start], axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = (
            np.take_along_axis(best_scores, order, 1),
            np.take_along_axis(best_rows, order, 1),
        )
        start += len(shard)
    return best_rows


def memory_cgroup(limit_gb: float):
    """A ``preexec_fn`` that moves the child into a cgroup v1 memory controller limited to
    ``limit_gb`` (page cache counts towards it, and is reclaimed before the child is killed)."""
    group = Path("/sys/fs/cgroup/memory/rebalance-bench")
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
    return lambda: (group / "cgroup.procs").write_text(str(os.getpid()))


def run_autofaiss(
    python: Path, folder: Path, budget_gb: float, timeout_s: float
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", AUTOFAISS, str(folder), f"{budget_gb:.3f}"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", default="IVF4096,SQ8")
    parser.add_argument("--max-memory-gb", type=float, default=4.0)
    parser.add_argument("--autofaiss-python", default=".autofaiss/bin/python")
    parser.add_argument(
        "--autofaiss-timeout", type=float, default=3600, help="seconds before autofaiss is stopped"
    )
    parser.add_argument("--folder", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--pool", type=Path, default=None, help="keep the pool here, and reuse it when it is already there"
    )
    parser.add_argument("--memory-cgroup-gb", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pool-", dir=args.folder) as work:
        folder = Path(work)
        if args.pool is not None:
            folder = args.pool / f"{args.rows}x{args.dim}"
            shutil.rmtree(folder / "rebalance", ignore_errors=True)  # a previous run's index
        started = time.perf_counter()
        if not (folder / "truth.npy").exists():
            folder.mkdir(parents=True, exist_ok=True)
            queries = write_pool(folder, args.rows, args.dim)
            np.save(folder / "queries.npy", queries)
            np.save(folder / "truth.npy", exact_top(folder, queries, 100))
        queries, truth = np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
        print(
            f"pool: {args.rows:,} × {args.dim} float16 in the LAION layout ({args.rows * args.dim * 2 / 2**30:.1f} GiB), "
            f"written (or found) in {time.perf_counter() - started:.0f} s; {args.factory}, memory cap {args.max_memory_gb} GB"
        )
        shards = max(1, -(-args.rows // SHARD_ROWS))
        ours = json.loads(
            subprocess.run(
                [sys.executable, "-c", OURS, str(folder), args.factory, str(args.max_memory_gb), str(shards)],
                check=True,
                capture_output=True,
                text=True,
                preexec_fn=memory_cgroup(args.memory_cgroup_gb) if args.memory_cgroup_gb else None,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        ours_recall = recall(np.load(folder / "rebalance-rows.npy"), truth)
        print(
            f"rebalance: ingest {ours['ingest_s']:.1f} s, train {ours['train_s']:.1f} s, build (train + {shards} shards + merge) "
            f"{ours['build_s']:.1f} s, lists on disk: {ours['lists_on_disk']}; recall@100 {ours_recall:.3f} (nprobe 64); "
            f"retrieval with quotas for {len(queries)} classes ({ours['retrieved']:,} of {ours['quota']:,} filled) {ours['retrieve_s']:.2f} s; peak RSS {ours['peak_rss_gb']:.2f} GB, of which anonymous "
            f"(heap, not mapped files) {ours['peak_anon_gb']:.2f} GB "
            f"(by phase: {ours['anon_by_phase_gb']}; RSS by phase: {ours['rss_by_phase_gb']})"
            + (
                f"; ran inside a {args.memory_cgroup_gb:g} GB memory cgroup (page cache included)"
                if args.memory_cgroup_gb
                else ""
            )
        )
        autofaiss = Path(args.autofaiss_python)
        if not autofaiss.exists():
            print(f"autofaiss: skipped, no {autofaiss} (see this script's docstring for the command)")
            return
        try:
            theirs, theirs_recall = compare_autofaiss(autofaiss, folder, args, truth)
        except subprocess.TimeoutExpired:
            print(
                f"autofaiss build_index: not finished after {args.autofaiss_timeout:.0f} s (stopped)  (baseline)\n"
                f"-> build time ratio (autofaiss / rebalance): > {args.autofaiss_timeout / ours['build_s']:.1f}x"
            )
            return
        print(
            f"autofaiss build_index ({theirs['index_key']}): build {theirs['build_s']:.1f} s, recall@100 {theirs_recall:.3f} (nprobe 64); "
            f"peak RSS {theirs['peak_rss_gb']:.2f} GB  (baseline)"
        )
        print(f"-> build time ratio (autofaiss / rebalance): {theirs['build_s'] / ours['build_s']:.2f}x")


def compare_autofaiss(
    autofaiss: Path, folder: Path, args: argparse.Namespace, truth: np.ndarray
) -> tuple[dict, float]:
    """autofaiss's build on the pool within the same budget (a larger one when it refuses), and its
    recall; raises ``TimeoutExpired`` past ``--autofaiss-timeout`` in all."""
    budget = args.max_memory_gb
    started = time.perf_counter()
    done = run_autofaiss(autofaiss, folder, budget, args.autofaiss_timeout)
    if done.returncode != 0 and "memory" in done.stderr:
        # autofaiss keeps the whole index (and k-means) in memory: it refuses a budget below that.
        reason = next(line for line in done.stderr.splitlines() if "[ERROR]" in line).split("[ERROR]: ")[-1]
        budget = max(8.0, 2 * args.rows * (args.dim + 8) / 2**30)
        print(
            f"autofaiss: refuses to build within {args.max_memory_gb:g} GB ({reason[:120]}...); "
            f"rerun with {budget:.1f} GB"
        )
        done = run_autofaiss(
            autofaiss, folder, budget, args.autofaiss_timeout - (time.perf_counter() - started)
        )
    if done.returncode != 0:
        sys.exit(f"autofaiss failed:\n{done.stderr[-2000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    return theirs, recall(np.load(folder / "autofaiss-rows.npy"), truth)


if __name__ == "__main__":
    main()
