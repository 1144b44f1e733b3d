"""A small LVIS v1-format dataset built in code: real PNGs from the demo data, categories modelled
on LVIS v1 entries (name, synonyms, def, synset, frequency, counts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import REPO

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
                }
            )
    annotations.reverse()  # files need not be sorted
    path = root / "lvis_v1_train.json"
    path.write_text(json.dumps({"images": image_rows, "annotations": annotations, "categories": CATEGORIES}))
    return path, root / "coco"
