"""Runner overhead and parallelism on the demo pipeline, each beside its baseline.

Prints, in one run on the same machine:
  - a fully cached rerun beside the cold run it replaces (what the cache saves), in process and as
    the `rebalance run` command a user types (a fresh process: imports included);
  - the sharded `verify_images` step on a dask LocalCluster beside the in-process executor, on the
    full 5,480-image demo data (train + test + pool folders as one dataset).

Usage: python benchmarks/bench_runner.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rebalance import api

REPO = Path(__file__).resolve().parents[1]


def timed(pipeline: Path, overrides: list[str]) -> float:
    started = time.perf_counter()
    api.run(pipeline, overrides)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    try:
        demo = REPO / "pipelines" / "demo.yaml"
        cold, warm = [], []
        for index in range(args.repeat):
            dirs = [
                f"cache_dir={work / f'c{index}'}",
                f"output_dir={work / f'o{index}'}",
                "executor.kind=local",
            ]
            cold.append(timed(demo, dirs))
            warm.append(timed(demo, dirs))
        command = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run(
                [str(Path(sys.executable).parent / "rebalance"), "run", str(demo), *dirs],
                check=True,
                capture_output=True,
            )
            command.append(time.perf_counter() - started)
        print(f"demo pipeline, cold run (local executor): {statistics.median(cold):6.2f} s  (baseline)")
        print(
            f"demo pipeline, fully cached rerun:        {statistics.median(warm):6.2f} s  "
            f"-> {statistics.median(cold) / statistics.median(warm):.1f}x faster"
        )
        print(
            f"`rebalance run` fully cached (new process): {statistics.median(command):6.2f} s  "
            f"-> {statistics.median(cold) / statistics.median(command):.1f}x faster than the cold run"
        )

        images = work / "all_images" / "all"
        images.mkdir(parents=True)
        for split in ("train", "test", "pool"):
            for png in (REPO / "data/fashion_mnist_lt" / split).rglob("*.png"):
                shutil.copy(png, images / f"{split}-{png.parent.name}-{png.name}")
        pipeline = work / "verify.yaml"
        pipeline.write_text(
            f"steps:\n  d: {{step: ingest_image_folder, root: {images.parent}}}\n"
            "  v: {step: verify_images, inputs: {dataset: d}}\n"
        )
        workers = os.cpu_count() or 1
        local, dask = [], []
        for index in range(args.repeat):
            for kind, sink in (("local", local), ("dask", dask)):
                dirs = [f"cache_dir={work / f'v{kind}{index}'}", f"output_dir={work / f'vo{kind}{index}'}"]
                run = api.run(
                    pipeline,
                    [
                        *dirs,
                        f"executor.kind={kind}",
                        "executor.shard_rows=500",
                        f"executor.n_workers={workers}",
                    ],
                )
                sink.append(next(s["wall_s"] for s in run.manifest["steps"] if s["id"] == "v"))
        print(
            f"verify_images on 5,480 images, in process:            {statistics.median(local):6.2f} s  (baseline)"
        )
        print(
            f"verify_images on 5,480 images, dask LocalCluster x{workers}: {statistics.median(dask):6.2f} s  "
            f"-> {statistics.median(local) / statistics.median(dask):.2f}x (includes cluster start-up)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
