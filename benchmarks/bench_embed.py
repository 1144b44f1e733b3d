"""Image embedding throughput through the runner, beside a plain open_clip + DataLoader loop.

rebalance: ``embed_images`` on a WebDataset pool, run by the pipeline runner on a 2-worker
LocalCluster (at least 8 shards; each worker keeps its model across shards, GPU workers pinned one
to a GPU on a GPU node). Figure: images / the step's wall time (model loads, shard reads and
writes included; the cluster is already up, started by the sharded ingest before it).

Baseline, in the same run: clip-retrieval's inference design done by hand: one process, the model
loaded once, a torch DataLoader decoding in worker processes while the model encodes, the same
batch size and the same number of decoding workers in all. Timed from the first batch requested to
the last vector on the host (the model load left out: in favour of the baseline).

Model: open_clip ViT-B-32 at 224 px with random weights (speed does not depend on them). Pool:
JPEGs of 256–512 px written with webdataset's ShardWriter, so decoding costs what it costs on
real pools.

Usage: python benchmarks/bench_embed.py [--device cpu|cuda] [--images 512] [--batch-size 32]
Last line: ``embed: rebalance X img/s (S shards, L model loads), plain loop Y img/s, ratio R``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from rebalance import api

MODEL = "ViT-B-32"


def write_pool(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of 256–512 px (smooth gradients with noise: real-photo-like sizes) in tar shards."""
    import webdataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with webdataset.ShardWriter(str(folder / "pool-%05d.tar"), maxcount=128, verbose=0) as sink:
        for row in range(count):
            height, width = rng.integers(256, 513, size=2)
            y, x = np.mgrid[0:height, 0:width]
            base = np.stack(
                [np.sin(x / rng.uniform(8, 40) + c) * np.cos(y / rng.uniform(8, 40)) for c in range(3)], -1
            )
            pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            sink.write({"__key__": f"{row:06d}", "jpg": buffer.getvalue(), "txt": f"image {row}"})
    return folder


def through_runner(
    pool: Path,
    work: Path,
    model: tuple[str, str | None],
    device: str,
    batch_size: int,
    loaders: int,
    shard_rows: int,
) -> dict:
    pipeline = {
        "name": "bench_embed",
        "executor": {"kind": "dask", "n_workers": 2, "gpu_workers": None, "shard_rows": shard_rows},
        "steps": {
            "pool": {"step": "ingest_webdataset", "root": str(pool)},
            "verified": {
                "step": "verify_images",
                "inputs": {"dataset": "pool"},
            },  # sharded: starts the cluster
            "embedded": {
                "step": "embed_images",
                "inputs": {"dataset": "verified"},
                "encoder": "open_clip",
                "model": model[0],
                "pretrained": model[1],
                "batch_size": batch_size,
                "device": device,
                "loader_workers": loaders,
            },
        },
    }
    if device == "cpu":
        pipeline["executor"]["gpu_workers"] = 0
    path = work / "bench_embed.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = api.run(path, [f"cache_dir={work / 'cache'}", f"output_dir={work / 'out'}"])
    step = next(s for s in result.manifest["steps"] if s["id"] == "embedded")
    workers = step["shards"]["workers"]
    return {
        "images": step["rows_out"],
        "seconds": step["wall_s"],
        "shards": step["shards"]["total"],
        "loads": sum(w["model_loads"] for w in workers.values()),
    }


def plain_loop(
    pool: Path, model_name: tuple[str, str | None], device: str, batch_size: int, loaders: int
) -> dict:
    """clip-retrieval's design by hand: a DataLoader over the tar members, the model on the device."""
    import open_clip
    import torch
    import webdataset
    from torch.utils.data import DataLoader

    name, pretrained = model_name
    if name.endswith(".json"):
        open_clip.add_model_config(Path(name))
        name = Path(name).stem
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model.to(dtype).eval()
    shards = sorted(str(path) for path in pool.glob("*.tar"))
    dataset = (
        webdataset.WebDataset(shards, shardshuffle=False, empty_check=False)
        .decode("pilrgb")
        .to_tuple("jpg")
        .map_tuple(preprocess)
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=loaders, pin_memory=device == "cuda")
    started, count = time.perf_counter(), 0
    with torch.inference_mode():
        for (pixels,) in loader:
            features = model.encode_image(pixels.to(device, dtype, non_blocking=True))
            torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
            count += len(pixels)
    return {"images": count, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-workers", type=int, default=1, help="decoding processes per model process")
    parser.add_argument("--tiny", action="store_true", help="a tiny CLIP built from config (smoke tests)")
    args = parser.parse_args()
    shard_rows = max(1, args.images // 8)  # at least 8 shards
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model: tuple[str, str | None] = (MODEL, None)
        if args.tiny:
            from rebalance.models.tiny import save_tiny_open_clip

            config, checkpoint = save_tiny_open_clip(work / "clip")
            model = (str(config), str(checkpoint))
        pool = write_pool(work / "pool", args.images)
        ours = through_runner(
            pool, work, model, args.device, args.batch_size, args.loader_workers, shard_rows
        )
        # Two model processes in the cluster, each with its decoders: the baseline gets as many.
        theirs = plain_loop(pool, model, args.device, args.batch_size, 2 * args.loader_workers)
    ours_rate = ours["images"] / ours["seconds"]
    theirs_rate = theirs["images"] / theirs["seconds"]
    print(
        f"machine: {os.cpu_count()} CPUs, device {args.device}, batch {args.batch_size}, {args.images} images"
    )
    print(
        f"embed: rebalance {ours_rate:.1f} img/s ({ours['shards']} shards, {ours['loads']} model loads), "
        f"plain loop {theirs_rate:.1f} img/s, ratio {ours_rate / theirs_rate:.2f}"
    )


if __name__ == "__main__":
    main()
