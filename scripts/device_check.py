"""One command for a person on a GPU node: does rebalance use this machine's GPUs, and how fast.

    python scripts/device_check.py                 # on a GPU node: --device cuda, in about 5 minutes
    python scripts/device_check.py --device cpu --quick   # the CI smoke test of the same checks

Four checks, each timed, then one summary:

1. the tiny pipeline (``pipelines/tiny.yaml``) with ``device=<device>`` on a fresh cache;
2. ``benchmarks/bench_embed.py`` on the device (rebalance's runner beside a plain DataLoader loop);
3. nearest-neighbour search on the device (faiss-gpu where it is installed, else the exact torch
   search) against FAISS on the CPU: the same neighbours;
4. the tiny diffusion pipeline on the device: images/s per GPU, the pipeline loaded once.

Exit status 0 when every check passed; the failing checks are named otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_pipeline(device: str, work: Path) -> str:
    from rebalance import api

    overrides = [f"cache_dir={work / 'cache'}", f"output_dir={work / 'out'}", f"device={device}"]
    result = api.run(REPO / "pipelines" / "tiny.yaml", overrides)
    embedded = [s for s in result.manifest["steps"] if s["shards"]["total"]]
    return f"{len(result.executed)} steps ran, {len(embedded)} sharded ({result.manifest['executor']})"


def embedding_benchmark(device: str, quick: bool) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_embed.py"), "--device", device]
    if quick:
        command += ["--images", "32", "--batch-size", "8", "--tiny"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def search_on_device(device: str) -> str:
    from rebalance.methods.index import build_index, exact_search_torch, search

    rng = np.random.default_rng(0)
    pool = rng.normal(size=(20_000, 64)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[rng.choice(len(pool), 256, replace=False)] + 0.01 * rng.normal(size=(256, 64)).astype(
        np.float32
    )
    index = build_index(pool, "Flat", normalise=False)
    cpu_scores, cpu_rows = search(index, queries, 10, backend="faiss", device="cpu")
    try:
        import faiss

        on_gpu = faiss.get_num_gpus() > 0 and device == "cuda"
    except (ImportError, AttributeError):
        on_gpu = False
    if on_gpu:
        scores, rows = search(index, queries, 10, backend="faiss", device=device)
        how = "faiss-gpu"
    else:
        scores, rows = exact_search_torch(pool, queries, 10, device=device)
        how = f"torch exact search on {device}"
    same = float((rows == cpu_rows).mean())
    if same < 0.999 or not np.allclose(scores, cpu_scores, atol=1e-4):
        raise AssertionError(f"{how}: {same:.1%} of neighbours agree with FAISS on the CPU")
    return f"{how}: the same top-10 neighbours as FAISS on the CPU for 256 queries over 20,000 vectors"


def diffusion(device: str, work: Path, quick: bool) -> str:
    from rebalance.core.device import resolve_device
    from rebalance.models.diffusion import DiffusionGenerator
    from rebalance.models.tiny import save_tiny_stable_diffusion

    model = save_tiny_stable_diffusion(work / "sd")
    generator = DiffusionGenerator(
        str(model), device=device, steps=4 if quick else 20, guidance=1.0, batch_size=8
    )
    count = 8 if quick else 64
    generator.text_to_image(["warm-up"], [0], 64)  # loads the pipeline once, compiles kernels
    started = time.perf_counter()
    images = generator.text_to_image(
        [f"a photo of a thing {i}" for i in range(count)], list(range(count)), 64
    )
    rate = len(images) / (time.perf_counter() - started)
    return (
        f"tiny diffusion, 64 px, {generator.steps} steps: {rate:.1f} images/s on one {resolve_device(device)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller runs: the CI smoke test")
    args = parser.parse_args()
    if args.device == "cuda":
        from rebalance.core.device import visible_gpus

        if not visible_gpus():
            print("device check: no GPU is visible here (CUDA_VISIBLE_DEVICES, nvidia-smi); use --device cpu")
            return 2
    results: list[tuple[str, bool, str, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        checks: list[tuple[str, Callable[[], str]]] = [
            ("tiny pipeline", lambda: tiny_pipeline(args.device, work / "tiny")),
            ("embedding", lambda: embedding_benchmark(args.device, args.quick)),
            ("search", lambda: search_on_device(args.device)),
            ("diffusion", lambda: diffusion(args.device, work, args.quick)),
        ]
        for name, check in checks:
            started = time.perf_counter()
            try:
                results.append((name, True, check(), time.perf_counter() - started))
            except Exception as error:  # a check that fails is reported, and the others still run
                detail = (
                    error.stderr.strip().splitlines()[-1] if getattr(error, "stderr", None) else str(error)
                )
                results.append(
                    (name, False, f"{type(error).__name__}: {detail}", time.perf_counter() - started)
                )
    print(f"\ndevice check on {args.device}{' (quick)' if args.quick else ''}:")
    for name, passed, detail, seconds in results:
        print(f"  {'ok  ' if passed else 'FAIL'} {name:14} {seconds:6.1f} s  {detail}")
    failed = [name for name, passed, _, _ in results if not passed]
    print("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
