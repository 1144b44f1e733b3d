from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rebalance.domain.artifacts import ConceptFrequency, Embeddings, LabeledDataset
from rebalance.domain.classes import class_counts, compute_class_stats
from rebalance.errors import DataError, RebalanceError
from rebalance.steps.embed import embed_texts, gather_embeddings
from rebalance.steps.index import build_index
from rebalance.steps.ingest import ingest_pool
from rebalance.steps.retrieve import retrieve
from tests.helpers import REPO

CLASSES = ["plane", "ship", "truck"]


def direction(label: int, rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = np.zeros((count, 16), dtype=np.float32)
    vectors[:, label] = 1
    return vectors + rng.normal(scale=0.05, size=vectors.shape).astype(np.float32)


def make_pool(tmp_path: Path, vectors: np.ndarray, labels: list[str]) -> LabeledDataset:
    (tmp_path / "pool").mkdir()
    for i in range(len(vectors)):
        Image.new("L", (4, 4), i % 256).save(tmp_path / "pool" / f"{i:03d}.png")
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(
            [("file_name", "label"), *((f"{i:03d}.png", lab) for i, lab in enumerate(labels))]
        )
    return ingest_pool(root=tmp_path / "pool", reference_labels=tmp_path / "labels.csv")


@pytest.fixture
def scene(tmp_path: Path):
    """Counts 9 / 5 / 1 (median 5): truck needs 4. The pool plants 6 trucks among 40 items."""
    rng = np.random.default_rng(0)
    labels = [0] * 9 + [1] * 5 + [2] * 1
    dataset = LabeledDataset.classification(
        [f"{i}.png" for i in range(15)], labels, CLASSES, image_root=str(tmp_path / "train")
    )
    vectors = np.concatenate([direction(c, rng, 1) for c in labels])
    noise = rng.normal(size=(34, 16)).astype(np.float32)
    noise[:, :3] = 0
    pool_vectors = np.concatenate([noise[:20], direction(2, rng, 6), noise[20:]])
    pool = make_pool(tmp_path, pool_vectors, ["noise"] * 20 + ["truck"] * 6 + ["noise"] * 14)
    embeddings = Embeddings(np.arange(15), vectors, "test-encoder")
    pool_embeddings = Embeddings(pool.images["image_id"].to_numpy(), pool_vectors, "test-encoder")
    return dataset, embeddings, pool, pool_embeddings


def test_retrieve_fills_the_tail_to_the_median_with_provenance(scene) -> None:
    dataset, embeddings, pool, pool_embeddings = scene
    index = build_index(pool_embeddings)
    assert index.meta["factory"] == "Flat" and index.num_rows == 40
    result = retrieve(dataset, pool, index, embeddings)
    assert class_counts(result)[0].tolist() == [9, 5, 5]
    added = result.images.filter(pc.equal(result.images["source"], "retrieved")).to_pylist()
    assert [row["image_id"] for row in added] == [15, 16, 17, 18]
    assert all(row["reference_label"] == "truck" and 20 <= row["pool_image_id"] < 26 for row in added)
    assert all(row["retrieval_query"] == "image: centroid of 1 image(s)" for row in added)
    assert [row["file_name"] for row in added][0].startswith("../pool/")
    assert sorted(row["retrieval_score"] for row in added)[0] > 0.9
    # Original rows are untouched; the buckets are frozen at the counts before retrieval.
    original = result.images.slice(0, 15)
    assert original["file_name"].to_pylist() == dataset.images["file_name"].to_pylist()
    assert original["pool_image_id"].null_count == 15
    assert compute_class_stats(result).table["bucket"].to_pylist() == ["rare", "rare", "rare"]
    assert result.categories["frequency"].to_pylist() == ["r", "r", "r"]

    gathered = gather_embeddings(result, embeddings, pool_embeddings)
    np.testing.assert_array_equal(gathered.vectors[:15], embeddings.vectors)
    np.testing.assert_array_equal(
        gathered.vectors[15:], pool_embeddings.vectors[[row["pool_image_id"] for row in added]]
    )


def test_knn_queries_and_the_quota_cap(scene) -> None:
    dataset, embeddings, pool, pool_embeddings = scene
    result = retrieve(
        dataset,
        pool,
        build_index(pool_embeddings),
        embeddings,
        image_query="examples",
        target="max",
        max_per_class=3,
        min_precision=None,  # the quota mechanics; tests/steps/test_retrieve_precision.py tests the gate
    )
    added = result.images.filter(pc.equal(result.images["source"], "retrieved"))
    # max = 9: ship wants 4, truck 8, both capped at 3; ship has no planted items, so it takes the best noise.
    assert class_counts(result)[0].tolist() == [9, 8, 4]
    assert set(added["retrieval_query"].to_pylist()) <= {f"image: kNN of example {i}" for i in range(15)}
    assert len(set(added["pool_image_id"].to_pylist())) == 6


def test_items_already_in_the_dataset_are_never_retrieved(scene, tmp_path: Path) -> None:
    dataset, embeddings, pool, pool_embeddings = scene
    # The dataset's truck image is pool item 20 (same file) and an exact copy of item 21's vector.
    files = dataset.images["file_name"].to_pylist()
    files[14] = str(tmp_path / "pool" / "020.png")
    dataset = LabeledDataset.classification(
        files, [0] * 9 + [1] * 5 + [2], CLASSES, image_root=str(tmp_path / "train")
    )
    vectors = np.asarray(embeddings.vectors).copy()
    vectors[14] = pool_embeddings.vectors[21]
    result = retrieve(
        dataset, pool, build_index(pool_embeddings), Embeddings(embeddings.ids, vectors, "test-encoder")
    )
    taken = set(
        result.images.filter(pc.equal(result.images["source"], "retrieved"))["pool_image_id"].to_pylist()
    )
    assert taken == {22, 23, 24, 25}


def test_tail_only_retrieves_for_the_concept_tail(scene) -> None:
    dataset, embeddings, pool, pool_embeddings = scene
    table = pa.table({"concept": CLASSES, "tail": [False, True, False]})
    frequency = ConceptFrequency(table, {}, b"")
    result = retrieve(
        dataset, pool, build_index(pool_embeddings), embeddings, frequency, tail_only=True, min_precision=None
    )
    assert class_counts(result)[0].tolist() == [9, 5, 1]  # ship is the concept tail but already at the median
    result = retrieve(
        dataset,
        pool,
        build_index(pool_embeddings),
        embeddings,
        frequency,
        tail_only=True,
        target=7,
        min_precision=None,
    )
    assert class_counts(result)[0].tolist() == [9, 7, 1]


def test_index_ids_are_pool_rows_when_the_pool_numbers_its_images_so(scene) -> None:
    """Pool ids 0..n-1 are looked up as rows (no sort of the index's ids); any other numbering goes
    through the general lookup and retrieves the same images; ids outside the pool are an error."""
    dataset, embeddings, pool, pool_embeddings = scene
    by_row = retrieve(dataset, pool, build_index(pool_embeddings), embeddings)
    shifted = pool.images["image_id"].to_numpy() + 100
    shifted_pool = dataclasses.replace(pool, images=pool.images.set_column(0, "image_id", pa.array(shifted)))
    shifted_index = build_index(Embeddings(shifted, pool_embeddings.vectors, "test-encoder"))
    looked_up = retrieve(dataset, shifted_pool, shifted_index, embeddings)
    assert looked_up.images["pool_file_name"].to_pylist() == by_row.images["pool_file_name"].to_pylist()
    assert len(by_row.images) > dataset.num_rows
    vectors = np.asarray(pool_embeddings.vectors)
    larger = Embeddings(np.arange(len(vectors) + 5), np.concatenate([vectors, vectors[:5]]), "test-encoder")
    with pytest.raises(DataError, match=r"the index holds ids 0\.\.44, the pool's are 0\.\.39"):
        retrieve(dataset, pool, build_index(larger), embeddings)


def test_mismatched_encoders_and_bad_vectors_are_clear_errors(scene) -> None:
    dataset, embeddings, pool, pool_embeddings = scene
    other = Embeddings(pool_embeddings.ids, pool_embeddings.vectors, "pixels_pca")
    with pytest.raises(DataError, match="embedded by 'test-encoder' but the pool index by 'pixels_pca'"):
        retrieve(dataset, pool, build_index(other), embeddings)
    with pytest.raises(DataError, match="needs the dataset's embeddings"):
        retrieve(dataset, pool, build_index(pool_embeddings))
    with pytest.raises(
        RebalanceError, match="embeddings made by 'pixels_pca' have no model that embeds text"
    ):
        retrieve(dataset, pool, build_index(other), query="text")
    broken = np.asarray(pool_embeddings.vectors).copy()
    broken[7] = np.nan
    with pytest.raises(DataError, match=r"NaN, infinite or zero \(first ids: \[7\]\)"):
        build_index(Embeddings(pool_embeddings.ids, broken, "test-encoder"))


def test_text_retrieval_with_the_real_minilm_embedder_finds_captions_of_the_class(tmp_path: Path) -> None:
    """REAL-Linear's path: rank pool images by how close their caption is to the class prompts."""
    corpus = pq.read_table(REPO / "data" / "captions" / "cupl_imagenet.parquet")
    wanted = ["goldfish", "school bus", "grand piano", "zebra"]
    rows = [
        row
        for name in wanted
        for row in corpus.filter(pc.equal(corpus["imagenet_class"], name)).slice(0, 15).to_pylist()
    ]
    (tmp_path / "pool").mkdir()
    for i in range(len(rows)):
        Image.new("L", (4, 4), i).save(tmp_path / "pool" / f"{i:03d}.png")
    pq.write_table(
        pa.table(
            {"file_name": [f"{i:03d}.png" for i in range(len(rows))], "caption": [r["caption"] for r in rows]}
        ),
        tmp_path / "captions.parquet",
    )
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(
            [("file_name", "label"), *((f"{i:03d}.png", r["imagenet_class"]) for i, r in enumerate(rows))]
        )
    pool = ingest_pool(
        root=tmp_path / "pool",
        captions=tmp_path / "captions.parquet",
        reference_labels=tmp_path / "labels.csv",
    )
    pool_embeddings = embed_texts(pool, device="cpu")
    assert pool_embeddings.encoder == "sentence:all-MiniLM-L6-v2" and pool_embeddings.vectors.shape == (
        60,
        384,
    )
    dataset = LabeledDataset.classification(
        [f"{i}.png" for i in range(12)],
        [0] * 8 + [1] * 2 + [2] * 2,
        ["goldfish", "school_bus", "grand_piano"],
    )
    result = retrieve(dataset, pool, build_index(pool_embeddings), query="text", target=10, device="cpu")
    added = result.images.filter(pc.equal(result.images["source"], "retrieved")).to_pylist()
    assert class_counts(result)[0].tolist() == [10, 10, 10]
    names = result.class_names()
    labels = dict(
        zip(
            result.annotations["image_id"].to_pylist(),
            result.annotations["category_id"].to_pylist(),
            strict=True,
        )
    )
    correct = [row["reference_label"] == names[labels[row["image_id"]]].replace("_", " ") for row in added]
    assert sum(correct) >= 16 and added[0]["retrieval_query"].startswith("text: a photo of a ")


def test_a_class_with_no_images_has_no_image_query_and_breaks_nothing(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
    dataset = LabeledDataset.classification([f"{i}.png" for i in range(4)], [0, 0, 1, 1], ["a", "b", "empty"])
    embeddings = Embeddings(np.arange(4), np.eye(4, dtype=np.float32)[[0, 0, 1, 1]], "test-encoder")
    index = build_index(
        Embeddings(pool.images["image_id"].to_numpy(), np.eye(4, dtype=np.float32), "test-encoder")
    )
    # Median 2: "empty" wants 2 but has no example to build an image query from; nothing else is short.
    result = retrieve(dataset, pool, index, embeddings)
    assert class_counts(result)[0].tolist() == [2, 2, 0]


def test_rows_without_an_image_file_do_not_stop_retrieval(scene) -> None:
    dataset, embeddings, pool, pool_embeddings = scene
    names = dataset.images["file_name"].to_pylist()
    names[3] = None  # a synthetic feature row has no file
    images = dataset.images.set_column(1, "file_name", pa.array(names, pa.string()))
    dataset = LabeledDataset(
        images, dataset.annotations, dataset.categories, dataset.removed, dataset.image_root
    )
    assert class_counts(retrieve(dataset, pool, build_index(pool_embeddings), embeddings))[0].tolist() == [
        9,
        5,
        5,
    ]
