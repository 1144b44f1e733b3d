"""A small caption pool with real sentences, as web captions behave: some name the class wrongly
("a tiger shark" is no tiger), some describe it without naming it.

The sentences are CuPL's (the repository's ``data/captions``: LLM-written descriptions of ImageNet
classes, each with the class it describes as its reference label), written as WebDataset shards
with webdataset's ``ShardWriter``, one tiny image a sample; or as LAION's metadata layout
(``metadata/metadata_<i>.parquet`` with url, caption, key, beside ``img_emb/img_emb_<i>.npy``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.helpers import REPO

CUPL = REPO / "data" / "captions" / "cupl_imagenet.parquet"
# Dataset classes, each named inside other ImageNet classes' sentences ("tiger shark", "bee eater",
# "stinkhorn mushroom", "hot air balloon"...), and how many training images each has: long-tailed.
CLASSES = {"tiger": 2, "bee": 3, "mushroom": 4, "snail": 30, "balloon": 30, "pelican": 30}
# Classes whose sentences name no dataset class: the bulk of a web pool.
OTHER_PER_CLASS = 2


def pool_sentences(limit_per_class: int = 40) -> pa.Table:
    """``key``, ``caption`` and ``label`` (the ImageNet class it describes): every sentence that
    names a dataset class as a word, at most ``limit_per_class`` per ImageNet class, plus a few of
    every other class; in a fixed order."""
    table = pq.read_table(CUPL)
    captions = table["caption"].to_pylist()
    labels = table["imagenet_class"].to_pylist()
    words = {name for name in CLASSES} | {f"{name}s" for name in CLASSES}
    taken: dict[str, int] = {}
    rows = []
    for caption, label in zip(captions, labels, strict=True):
        tokens = set(caption.lower().replace(",", " ").replace(".", " ").split())
        limit = limit_per_class if tokens & words else OTHER_PER_CLASS
        if taken.get(label, 0) < limit:
            taken[label] = taken.get(label, 0) + 1
            rows.append((caption, label))
    return pa.table(
        {
            "key": [f"{i:06d}" for i in range(len(rows))],
            "caption": [caption for caption, _ in rows],
            "label": [label for _, label in rows],
        }
    )


def tiny_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_webdataset(
    folder: Path, sentences: pa.Table, per_shard: int = 500, key_column: str = "key"
) -> None:
    """One sample a row: ``<key>.png``, ``<key>.txt`` (the caption), ``<key>.json`` (url and the
    row's other columns, as img2dataset saves additional columns)."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for number, row in enumerate(sentences.to_pylist()):
            extra = {name: value for name, value in row.items() if name not in ("caption", "label")}
            sink.write(
                {
                    "__key__": row[key_column],
                    "png": tiny_png(number),
                    "txt": row["caption"],
                    "json": json.dumps({"url": f"https://example.com/{row.get('key')}.png", **extra}),
                }
            )


def write_reference_labels(path: Path, sentences: pa.Table) -> Path:
    path.write_text(
        "key,label\n"
        + "".join(
            f"{k},{v}\n"
            for k, v in zip(sentences["key"].to_pylist(), sentences["label"].to_pylist(), strict=True)
        )
    )
    return path


def write_train_folder(root: Path) -> Path:
    """An image folder: ``CLASSES[name]`` tiny images under ``root/<name>/``."""
    for number, (name, count) in enumerate(CLASSES.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(tiny_png(1000 * number + i))
    return root


def write_laion_layout(root: Path, sentences: pa.Table, vectors: np.ndarray, files: int = 2) -> Path:
    """``metadata/metadata_<i>.parquet`` (url, caption, key) and ``img_emb/img_emb_<i>.npy``
    (float16, row for row) in ``files`` shards; small row groups, so pieces are many."""
    (root / "metadata").mkdir(parents=True)
    (root / "img_emb").mkdir()
    bounds = np.linspace(0, sentences.num_rows, files + 1).astype(int)
    for number in range(files):
        part = sentences.slice(bounds[number], bounds[number + 1] - bounds[number])
        metadata = pa.table(
            {
                "url": [f"https://example.com/{key}.jpg" for key in part["key"].to_pylist()],
                "caption": part["caption"],
                "key": part["key"],
            }
        )
        pq.write_table(metadata, root / "metadata" / f"metadata_{number}.parquet", row_group_size=200)
        np.save(
            root / "img_emb" / f"img_emb_{number}.npy",
            vectors[bounds[number] : bounds[number + 1]].astype(np.float16),
        )
    return root
