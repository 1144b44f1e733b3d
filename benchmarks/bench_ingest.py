"""Reading an LVIS v1 train-shaped instances file: rebalance's `read_coco` beside lvis-api.

Writes a synthetic file shaped like ``lvis_v1_train.json`` to a temporary folder, about 423 MB at
the default scale: 100,170 images with LVIS's keys (``coco_url`` and no ``file_name``,
``neg_category_ids``, ``not_exhaustive_category_ids``, ``flickr_url``, ...), 1,270,141 annotations
with one polygon each (6-22 points inside the box, coordinates with two decimals) and 1,203
categories with LVIS's fields. Category frequencies are long-tailed as in LVIS: weights drawn
log-uniformly from 1-10, 11-100 and 101-20,000 for 337, 461 and 405 categories (LVIS's rare /
common / frequent split); every image has at least one annotation, the rest fall on images at
random. Then, each in a fresh process so that each peak RSS (VmHWM) is its own:
  - ``rebalance.io.coco.read_coco(path, "train")``: msgspec into typed structs, tables built from
    columns, every mask checked (each decoded once on its own) and kept as the file's JSON text;
  - ``lvis.LVIS(path)`` from lvis-api (``json.load`` and its index): the baseline.
Prints each one's wall time (imports excluded) and peak RSS, our time as a fraction of lvis-api's,
and whether the per-category image and instance counts are identical (ours from the annotations
table, lvis-api's from ``cat_img_map``).

Usage: python benchmarks/bench_ingest.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import numpy as np

CHILD = r"""
import json, sys, time
from pathlib import Path
def peak_rss_gb():
    # VmHWM, this process's own peak: ru_maxrss also keeps the high-water mark of the image exec
    # replaced, the benchmark's parent as copied at fork, which can be the larger one.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20
kind, path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if kind == "rebalance":
    import pyarrow as pa
    from rebalance.io.coco import read_coco
    pa.array([0])  # pyarrow imports pandas on its first conversion: an import, not timed either
else:
    from lvis import LVIS
imports_gb = peak_rss_gb()
started = time.perf_counter()
if kind == "rebalance":
    images, annotations, categories = read_coco(path, "train")
else:
    dataset = LVIS(str(path))
seconds = time.perf_counter() - started
peak_gb = peak_rss_gb()
# [category id, images, instances] per category, after the peak was taken.
if kind == "rebalance":
    grouped = annotations.group_by("category_id").aggregate(
        [("image_id", "count_distinct"), ("image_id", "count")]
    )
    found = {c: (i, n) for c, i, n in zip(*(grouped[k].to_pylist() for k in
             ("category_id", "image_id_count_distinct", "image_id_count")))}
    counts = [[c, *found.get(c, (0, 0))] for c in categories["category_id"].to_pylist()]
else:
    counts = [[c, len(set(dataset.cat_img_map.get(c, []))), len(dataset.cat_img_map.get(c, []))]
              for c in dataset.cats]
out.write_text(json.dumps(sorted(counts)))
print(json.dumps({"seconds": seconds, "peak_gb": peak_gb, "imports_gb": imports_gb}))
"""

# LVIS v1's rare / common / frequent split of its 1,203 categories, and each bucket's image counts.
BUCKETS = ((337, 1, 10), (461, 11, 100), (405, 101, 20_000))


def category_weights(categories: int, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed weights: log-uniform within each LVIS bucket's range, buckets in LVIS's shares."""
    sizes = [round(categories * n / 1203) for n, *_ in BUCKETS]
    sizes[-1] = categories - sum(sizes[:-1])
    weights = np.concatenate(
        [
            np.exp(rng.uniform(np.log(lo), np.log(hi), size))
            for size, (_, lo, hi) in zip(sizes, BUCKETS, strict=True)
        ]
    )
    rng.shuffle(weights)  # LVIS numbers its categories alphabetically, not by frequency
    return weights / weights.sum()


def write_lvis_like(path: Path, images: int, annotations: int, categories: int, seed: int) -> None:
    """Write an LVIS v1-shaped instances file, annotations in chunks so memory stays small."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1, 6 * images + 1), size=images, replace=False)  # sparse, unsorted
    sizes = np.array([(640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (640, 360)])
    width, height = sizes[rng.integers(0, len(sizes), images)].T
    image_of = np.concatenate([np.arange(images), rng.integers(0, images, annotations - images)])
    rng.shuffle(image_of)
    category_of = rng.choice(categories, size=annotations, p=category_weights(categories, rng))

    image_rows = [
        {
            "date_captured": "2013-11-14 11:18:45",
            "neg_category_ids": (
                np.sort(rng.choice(categories, rng.integers(0, 9), replace=False)) + 1
            ).tolist(),
            "id": int(image_id),
            "license": int(rng.integers(1, 9)),
            "height": int(h),
            "width": int(w),
            "flickr_url": f"http://farm{rng.integers(1, 10)}.staticflickr.com/{rng.integers(1000, 9999)}/"
            f"{rng.integers(10**9, 10**10)}_{rng.integers(16**9, 16**10):x}_z.jpg",
            "coco_url": f"http://images.cocodataset.org/train2017/{image_id:012d}.jpg",
            "not_exhaustive_category_ids": (
                np.sort(rng.choice(categories, rng.integers(0, 3), replace=False)) + 1
            ).tolist(),
        }
        for image_id, w, h in zip(image_ids, width, height, strict=True)
    ]
    instances = np.bincount(category_of, minlength=categories)
    pairs = np.unique(image_of.astype(np.int64) * categories + category_of)
    image_counts = np.bincount(pairs % categories, minlength=categories)
    category_rows = [
        {
            "name": f"category_{c:04d}",
            "instance_count": int(instances[c]),
            "def": f"a synthetic category number {c}, standing in for an LVIS WordNet gloss",
            "synonyms": [f"category_{c:04d}", f"synthetic_thing_{c}"],
            "image_count": int(image_counts[c]),
            "id": c + 1,
            "frequency": "r" if image_counts[c] <= 10 else "c" if image_counts[c] <= 100 else "f",
            "synset": f"category_{c:04d}.n.01",
        }
        for c in range(categories)
    ]

    encoder = msgspec.json.Encoder()
    with path.open("wb") as out:
        out.write(b'{"info": {"description": "synthetic LVIS v1 train", "version": "1.0"}, "annotations": [')
        for start in range(0, annotations, 100_000):
            stop = min(start + 100_000, annotations)
            image = image_of[start:stop]
            w, h = width[image], height[image]
            box_w = np.round(rng.uniform(0.05, 0.9, len(image)) * w, 2)
            box_h = np.round(rng.uniform(0.05, 0.9, len(image)) * h, 2)
            x = np.round(rng.uniform(0, 1, len(image)) * (w - box_w), 2)
            y = np.round(rng.uniform(0, 1, len(image)) * (h - box_h), 2)
            # One polygon per annotation, 6-22 points inside its box.
            points = rng.integers(6, 23, len(image))
            owner = np.repeat(np.arange(len(image)), points)
            xs = x[owner] + rng.uniform(0, 1, len(owner)) * box_w[owner]
            ys = y[owner] + rng.uniform(0, 1, len(owner)) * box_h[owner]
            flat = np.round(np.stack([xs, ys], axis=1), 2).ravel().tolist()
            ends = np.cumsum(2 * points).tolist()
            area = np.round(box_w * box_h * rng.uniform(0.4, 0.9, len(image)), 2).tolist()
            rows = [
                {
                    "area": area[i],
                    "id": start + i + 1,
                    "segmentation": [flat[ends[i] - 2 * int(points[i]) : ends[i]]],
                    "image_id": int(image_ids[image[i]]),
                    "bbox": [float(x[i]), float(y[i]), float(box_w[i]), float(box_h[i])],
                    "category_id": int(category_of[start + i]) + 1,
                }
                for i in range(len(image))
            ]
            if start:
                out.write(b", ")
            out.write(encoder.encode(rows)[1:-1])
        out.write(b'], "images": ')
        out.write(encoder.encode(image_rows))
        out.write(b', "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4}]')
        out.write(b', "categories": ')
        out.write(encoder.encode(category_rows))
        out.write(b"}")


def run_child(kind: str, path: Path, out: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(out)], capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"the {kind} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of LVIS v1 train's images and annotations"
    )
    parser.add_argument("--categories", type=int, default=1203)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = max(1, round(100_170 * args.scale))
    annotations = max(images, round(1_270_141 * args.scale))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        folder = Path(work)
        path = folder / "lvis_v1_train.json"
        write_lvis_like(path, images, annotations, args.categories, args.seed)
        print(
            f"LVIS v1 train-shaped file (scale {args.scale}): {images:,} images, {annotations:,} annotations "
            f"with a polygon each, {args.categories:,} categories, {path.stat().st_size / 1e6:,.1f} MB"
        )
        base = run_child("lvis", path, folder / "lvis-counts.json")
        ours = run_child("rebalance", path, folder / "rebalance-counts.json")
        print(
            f"lvis-api LVIS(path):            {base['seconds']:8.2f} s, peak RSS {base['peak_gb']:5.2f} GB "
            f"({base['imports_gb']:.2f} GB after imports)  (baseline)"
        )
        print(
            f"rebalance.io.coco.read_coco:    {ours['seconds']:8.2f} s, peak RSS {ours['peak_gb']:5.2f} GB "
            f"({ours['imports_gb']:.2f} GB after imports)  -> {ours['seconds'] / base['seconds']:.2f} of "
            f"lvis-api's time ({base['seconds'] / ours['seconds']:.1f}x faster), "
            f"{ours['peak_gb'] / base['peak_gb']:.2f} of its peak RSS"
        )
        same = (folder / "lvis-counts.json").read_text() == (folder / "rebalance-counts.json").read_text()
        print(f"per-category image and instance counts identical: {same} ({args.categories:,} categories)")


if __name__ == "__main__":
    main()
