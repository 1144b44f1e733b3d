from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from rebalance.domain.artifacts import Embeddings
from rebalance.domain.classes import class_buckets, class_counts
from rebalance.errors import DataError
from rebalance.steps.dedup import entity_thinning, semdedup_step, thinnable_images
from rebalance.steps.embed import embed_pixels_pca
from rebalance.steps.export import export_hf
from rebalance.steps.ingest import ingest_image_folder
from tests.helpers import REPO

DEMO_TRAIN = REPO / "data" / "fashion_mnist_lt" / "train"


def folder_with_planted_copies(tmp_path: Path) -> Path:
    """trouser: 120 images (frequent) with 8 near-copies; bag: 6 images (rare) with 3 near-copies."""
    for name, count, copies in (("trouser", 120, 8), ("bag", 6, 3)):
        (tmp_path / name).mkdir()
        sources = sorted((DEMO_TRAIN / name).glob("*.png"))[:count]
        for png in sources:
            shutil.copy(png, tmp_path / name / png.name)
        for png in sources[:copies]:
            pixels = np.asarray(Image.open(png)).copy()
            pixels[0, 0] ^= 1  # a one-level change in one pixel
            Image.fromarray(pixels).save(tmp_path / name / f"zz_copy_{png.name}")
    return tmp_path


def test_semdedup_removes_planted_head_copies_and_no_tail_image(tmp_path: Path) -> None:
    dataset = ingest_image_folder(root=folder_with_planted_copies(tmp_path))
    embeddings = embed_pixels_pca(dataset, dim=32)
    assert embeddings.encoder == "pixels_pca" and embeddings.vectors.shape == (137, 32)
    out = semdedup_step(dataset, embeddings, epsilon=1e-4, images_per_cluster=40)
    assert class_counts(out)[0].tolist() == [9, 120]  # bag untouched; trouser lost its 8 copies
    removed = out.removed.to_pylist()
    assert len(removed) == 8 and all(r["step"] == "semdedup" and "pixels_pca" in r["reason"] for r in removed)
    names = {r["file_name"].replace("zz_copy_", "") for r in removed}
    assert len(names) == 8  # one copy of each pair, whichever is farther from its centroid is kept
    card = export_hf(out, original=dataset).card
    assert "| class | bucket | before | -semdedup | after | change |" in card
    assert "| trouser | frequent | 128 | -8 | 120 | -8 |" in card and "near-duplicate of image" in card


def test_thinnable_images_are_those_of_head_classes_only() -> None:
    dataset = ingest_image_folder(root=DEMO_TRAIN)
    head = thinnable_images(dataset, class_buckets(dataset), ("frequent",))
    labels = dataset.annotations["category_id"].to_numpy()
    names = np.array(dataset.class_names())
    assert set(names[labels[head]]) == {"coat", "dress", "pullover", "t-shirt_top", "trouser"}
    # Thresholds move classes between buckets: with common ≤ 200, coat (129 images) is not thinned.
    wider = thinnable_images(dataset, class_buckets(dataset, common_max_images=200), ("frequent",))
    assert set(names[labels[wider]]) == {"dress", "pullover", "t-shirt_top", "trouser"}


def test_entity_thinning_caps_head_classes_and_spares_the_tail() -> None:
    dataset = ingest_image_folder(root=DEMO_TRAIN)
    before = class_counts(dataset)[0]
    out = entity_thinning(dataset, tau=100, seed=0)
    after = class_counts(out)[0]
    head = before > 100
    assert np.array_equal(after[~head], before[~head])
    # Each head class keeps Binomial(N_e, 100 / N_e) images: mean 100, sd < 10.
    assert np.all(np.abs(after[head] - 100) < 40)
    assert out.removed.num_rows == before.sum() - after.sum()
    assert entity_thinning(dataset, tau=100, seed=0).images.equals(out.images)
    assert not entity_thinning(dataset, tau=100, seed=1).images.equals(out.images)
    default = entity_thinning(dataset)  # tau = largest protected class (sandal, 77 images)
    shirts = default.removed.filter(pc.starts_with(default.removed["file_name"], "t-shirt"))
    assert "min(1, 77 / 1000)" in shirts["reason"][0].as_py()


def test_embeddings_must_cover_every_image() -> None:
    dataset = ingest_image_folder(root=DEMO_TRAIN, max_images_per_class=3)
    partial = Embeddings(np.arange(5), np.zeros((5, 4), dtype=np.float32), "test")
    with pytest.raises(DataError, match="have no embedding"):
        semdedup_step(dataset, partial)
