"""A small LVIS v1-format dataset built in code: real PNGs from the demo data, categories modelled
on LVIS v1 entries (name, synonyms, def, synset, frequency, counts); and the overrides that run
``pipelines/lvis.yaml`` on it with tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import REPO

LVIS = REPO / "pipelines" / "lvis.yaml"

CATEGORIES = [
    {
        "id": 1,
        "name": "aerosol_can",
        "synonyms": ["aerosol_can", "spray_can"],
        "def": "a dispenser that holds a substance under pressure",
        "synset": "aerosol.n.02",
        "frequency": "c",
        "image_count": 64,
        "instance_count": 109,
    },
    {
        "id": 3,
        "name": "alcohol",
        "synonyms": ["alcohol", "alcoholic_beverage"],
        "def": "a liquor or brew containing alcohol as the active agent",
        "synset": "alcohol.n.01",
        "frequency": "r",
        "image_count": 2,
        "instance_count": 3,
    },
    {
        "id": 57,
        "name": "banana",
        "synonyms": ["banana"],
        "def": "elongated crescent-shaped yellow fruit with soft sweet flesh",
        "synset": "banana.n.02",
        "frequency": "f",
        "image_count": 1787,
        "instance_count": 18902,
    },
]


# Masks in both of COCO's forms: polygons, and run-length encoding of a 28 × 28 image (uncompressed
# counts, and the compressed string pycocotools' ``mask.encode`` writes for the same mask).
POLYGON = [[1.0, 2.0, 11.0, 2.0, 11.0, 14.0, 1.0, 14.0]]
RLE_COUNTS = [30, 8, 20, 8, 718]
RLE_STRING = "n08d00je0"


def mask_of(number: int) -> dict | list:
    """The segmentation of the fixtures' ``number``-th annotation: an RLE every fifth, else a polygon."""
    if number % 5 == 4:
        return {"size": [28, 28], "counts": RLE_STRING if number % 10 == 4 else RLE_COUNTS}
    return [[x + number for x in POLYGON[0]]]


def build_lvis(root: Path, images: int = 6) -> tuple[Path, Path]:
    """Write ``root/lvis_v1_train.json`` and ``root/coco/train2017/*.png``; return both paths."""
    pngs = sorted((REPO / "data/fashion_mnist_lt/train/trouser").glob("*.png"))[:images]
    image_dir = root / "coco" / "train2017"
    image_dir.mkdir(parents=True)
    image_rows, annotations = [], []
    for index, png in enumerate(pngs, start=1):
        name = f"{index:012d}.png"
        shutil.copy(png, image_dir / name)
        image_rows.append(
            {
                "id": index,
                "coco_url": f"http://images.cocodataset.org/train2017/{name}",
                "width": 28,
                "height": 28,
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [],
            }
        )
        categories = [57, 57, 1] if index <= 2 else [57]
        for category in categories:
            annotations.append(
                {
                    "id": 100 + len(annotations),
                    "image_id": index,
                    "category_id": category,
                    "bbox": [1.0, 2.0, 10.0, 12.0],
                    "area": 120.0,
                    "segmentation": mask_of(len(annotations)),
                }
            )
    annotations.reverse()  # files need not be sorted
    path = root / "lvis_v1_train.json"
    path.write_text(json.dumps({"images": image_rows, "annotations": annotations, "categories": CATEGORIES}))
    return path, root / "coco"


# Six categories with metadata modelled on LVIS v1 (name, synonyms, definition, WordNet synset,
# r/c/f frequency) for the pipeline fixture, each drawn with the images of one Fashion-MNIST class
# so that image embeddings separate them.
PIPELINE_CATEGORIES = [
    (
        57,
        "banana",
        ["banana"],
        "elongated crescent-shaped yellow fruit with soft sweet flesh",
        "banana.n.02",
        "f",
        "trouser",
        16,
    ),
    (
        12,
        "apple",
        ["apple"],
        "fruit with red or yellow or green skin and sweet to tart crisp whitish flesh",
        "apple.n.01",
        "f",
        "bag",
        12,
    ),
    (
        94,
        "bicycle",
        ["bicycle", "bike_(bicycle)"],
        "a wheeled vehicle that has two wheels and is moved by foot pedals",
        "bicycle.n.01",
        "f",
        "sneaker",
        8,
    ),
    (
        1,
        "aerosol_can",
        ["aerosol_can", "spray_can"],
        "a dispenser that holds a substance under pressure",
        "aerosol.n.02",
        "c",
        "sandal",
        5,
    ),
    (
        3,
        "alcohol",
        ["alcohol", "alcoholic_beverage"],
        "a liquor or brew containing alcohol as the active agent",
        "alcohol.n.01",
        "r",
        "dress",
        2,
    ),
    (
        35,
        "bagpipe",
        ["bagpipe"],
        "a tubular wind instrument; the player blows air into a bag and squeezes it out",
        "bagpipe.n.01",
        "r",
        "ankle_boot",
        1,
    ),
]


def build_lvis_pipeline_inputs(root: Path) -> dict[str, Path]:
    """Everything ``pipelines/lvis.yaml`` reads, in LVIS v1 format, small enough for CI.

    train: 44 images (16 … 1 per category, the first 4 banana images also show an apple: multi-
    label), val: 3 images per category, a pool of 48 unlabelled images, and a caption corpus whose
    mention counts follow the categories' frequency (synthetic captions, for counting only).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    demo = REPO / "data/fashion_mnist_lt"
    categories = [
        {"id": cid, "name": name, "synonyms": syns, "def": definition, "synset": synset, "frequency": freq}
        for cid, name, syns, definition, synset, freq, _, _ in PIPELINE_CATEGORIES
    ]
    sources = {
        cid: sorted((demo / "train" / folder).glob("*.png")) for cid, *_, folder, _ in PIPELINE_CATEGORIES
    }
    test_sources = {
        cid: sorted((demo / "test" / folder).glob("*.png")) for cid, *_, folder, _ in PIPELINE_CATEGORIES
    }
    paths = {}
    for split, per_class in (("train", None), ("val", 3)):
        image_dir = root / "coco" / f"{split}2017"
        image_dir.mkdir(parents=True)
        images, annotations = [], []
        for cid, *_, count in PIPELINE_CATEGORIES:
            for png in (test_sources if split == "val" else sources)[cid][: per_class or count]:
                image_id = len(images) + 1 + (0 if split == "train" else 10_000)
                name = f"{image_id:012d}.png"
                shutil.copy(png, image_dir / name)
                url = f"http://images.cocodataset.org/{split}2017/{name}"
                images.append(
                    {
                        "id": image_id,
                        "coco_url": url,
                        "width": 28,
                        "height": 28,
                        "neg_category_ids": [],
                        "not_exhaustive_category_ids": [],
                    }
                )
                labels = [cid, 12] if split == "train" and cid == 57 and len(images) <= 4 else [cid]
                for label in labels:
                    box = {
                        "bbox": [2.0, 2.0, 20.0, 24.0],
                        "area": 480.0,
                        "segmentation": mask_of(len(annotations)),
                    }
                    annotations.append(
                        {"id": len(annotations) + 1, "image_id": image_id, "category_id": label, **box}
                    )
        paths[split] = root / f"lvis_v1_{split}.json"
        paths[split].write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    paths["image_root"] = root / "coco"
    pool = root / "pool"
    pool.mkdir()
    for cid, *_, folder, count in PIPELINE_CATEGORIES:
        for png in sources[cid][count : count + 8]:
            shutil.copy(png, pool / f"{folder}_{png.name}")
    paths["pool"] = pool
    mentions = {
        "banana": 400,
        "apple": 300,
        "bike": 120,
        "bicycle": 80,
        "spray can": 30,
        "alcoholic beverage": 6,
        "bagpipe": 2,
    }
    captions = [f"a photo of a {phrase} on the table" for phrase, n in mentions.items() for _ in range(n)]
    captions += [f"an empty street number {i}" for i in range(500)]
    paths["captions"] = root / "captions.parquet"
    pq.write_table(pa.table({"caption": captions}), paths["captions"])
    return paths


def lvis_overrides(tmp_path: Path) -> list[str]:
    """Overrides that run ``LVIS`` on this fixture (built under ``tmp_path/data``) with tiny random
    models, its cache and outputs in ``tmp_path``, and small settings for CI."""
    from rebalance.models.tiny import save_tiny_open_clip, save_tiny_stable_diffusion

    data = build_lvis_pipeline_inputs(tmp_path / "data")
    config, checkpoint = save_tiny_open_clip(tmp_path / "models" / "open_clip")
    diffusion = save_tiny_stable_diffusion(tmp_path / "models" / "sd")
    overrides = [
        f"cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'out'}",
        "executor.kind=local",
        "executor.shard_rows=16",
        f"steps.train.annotations={data['train']}",
        f"steps.train.image_root={data['image_root']}",
        f"steps.val.annotations={data['val']}",
        f"steps.val.image_root={data['image_root']}",
        f"steps.corpus.captions={data['captions']}",
        f"steps.pool.root={data['pool']}",
        f"steps.generated.model={diffusion}",
        "steps.generated.image_size=32",
        "steps.generated.steps=2",
        "steps.generated.guidance=1.0",
        # A random CLIP scores every image alike: its filters would reject all; the code path is the same.
        "steps.generated.min_clip_score=null",
        "steps.generated.real_similarity=null",
        "steps.retrieved.duplicate_threshold=null",
        "steps.retrieved.min_precision=null",  # the precision gate, likewise
        "steps.retrieved.max_per_class=3",  # a small pool: synthesis fills the rest
        "steps.rebalanced.epochs=5",
        "steps.baseline.epochs=5",
        "steps.export.num_shards=2",
    ]
    for step in ("embedded", "val_embedded", "pool_embedded"):
        overrides += [
            f"steps.{step}.model={config}",
            f"steps.{step}.pretrained={checkpoint}",
            f"steps.{step}.device=cpu",
        ]
    return overrides
