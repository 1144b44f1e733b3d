"""A WebDataset pool, written with the webdataset library's own ShardWriter from the demo's pool
images, goes through ingest -> verify -> retrieval -> export, read as a stream and never unpacked."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import datasets
import pytest

from rebalance import api
from rebalance.domain.artifacts import LabeledDataset
from rebalance.errors import DataError
from rebalance.io.references import image_ref
from rebalance.io.webdataset import scan_webdataset
from tests.helpers import REPO

DEMO = REPO / "data" / "fashion_mnist_lt"


def write_shards(folder: Path, count: int = 300, per_shard: int = 100) -> dict[str, str]:
    """``count`` pool PNGs as samples ``<key>.png`` + ``.txt`` + ``.json`` in shards of ``per_shard``;
    returns each key's true label."""
    import webdataset as wds

    folder.mkdir(parents=True)
    with open(DEMO / "pool_labels.csv") as handle:
        labels = {row["file_name"]: row["label"] for row in csv.DictReader(handle)}
    chosen = sorted(labels)[:count]
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for file_name in chosen:
            key = Path(file_name).stem
            sink.write(
                {
                    "__key__": key,
                    "png": (DEMO / "pool" / file_name).read_bytes(),
                    "txt": f"a photo of a {labels[file_name].replace('_', ' ')}",
                    "json": {"url": f"https://example.com/{key}.png", "key": key},
                }
            )
    return {Path(name).stem: labels[name] for name in chosen}


def retrieval_pipeline(tmp_path: Path, pool_step: str, extra_steps: str = "") -> Path:
    """Demo images, the ``pool_step`` pool, verify, pixel PCA, an index, kNN retrieval and an export."""
    pipeline = tmp_path / "pool.yaml"
    pipeline.write_text(
        "executor: {kind: local}\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_images_per_class: 20}}\n"
        f"  pool: {pool_step}\n"
        "  checked: {step: verify_images, inputs: {dataset: pool}}\n"
        "  embedded: {step: embed_pixels_pca, inputs: {dataset: train}}\n"
        "  pool_embedded: {step: embed_pixels_pca, inputs: {dataset: checked, fit: train}}\n"
        "  index: {step: build_index, inputs: {embeddings: pool_embedded}}\n"
        "  retrieved: {step: retrieve, inputs: {dataset: train, pool: checked, index: index, embeddings: embedded},"
        " query: image, image_query: examples, target: max, max_per_class: 5, min_precision: null}\n"
        "  export: {step: export_hf, inputs: {dataset: retrieved, original: train}}\n" + extra_steps
    )
    return pipeline


def test_a_shard_is_scanned_as_a_stream_into_references_to_its_members(tmp_path: Path) -> None:
    labels = write_shards(tmp_path / "pool", count=30, per_shard=10)
    samples = scan_webdataset(tmp_path / "pool")
    assert samples.num_rows == 30 and samples["key"].to_pylist() == sorted(labels)
    first = samples.to_pylist()[0]
    assert first["file_name"].startswith("00000.tar#") and first["file_name"].endswith(f":{first['key']}.png")
    assert first["caption"] == f"a photo of a {labels[first['key']].replace('_', ' ')}"
    assert first["url"] == f"https://example.com/{first['key']}.png"
    ref = image_ref(first["file_name"], tmp_path / "pool")
    assert ref.read_bytes() == (DEMO / "pool" / f"{first['key']}.png").read_bytes()


def test_a_webdataset_pool_is_retrieved_from_and_exported_with_its_bytes(tmp_path: Path) -> None:
    labels = write_shards(tmp_path / "pool")
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("key", "label"), *labels.items()])
    pipeline = retrieval_pipeline(
        tmp_path,
        f"{{step: ingest_webdataset, root: {tmp_path / 'pool'}, reference_labels: {tmp_path / 'labels.csv'}}}",
        "  references: {step: export_hf, inputs: {dataset: retrieved}, embed_images: false}\n",
    )
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    api.run(pipeline, dirs)
    exported = datasets.load_from_disk(str(tmp_path / "out" / "export"))["train"]
    retrieved = exported.filter(lambda row: row["source"] == "retrieved")
    assert 0 < retrieved.num_rows <= 5 * 10
    row = retrieved[0]
    key = Path(row["pool_file_name"].rpartition(":")[2]).stem
    # The export holds the member's own bytes: the PNG the shard was written from, decodable.
    assert row["image"].size == (28, 28)
    raw = retrieved.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"] == (DEMO / "pool" / f"{key}.png").read_bytes()
    card = (tmp_path / "out" / "export" / "README.md").read_text()
    assert "retrieved" in card and "carry the class they were retrieved for" in card
    assert "## Image references" not in card
    # Without the bytes, the card explains the tar-member references the image paths hold.
    by_reference = datasets.load_from_disk(str(tmp_path / "out" / "references"))["train"]
    member = next(r for r in by_reference["image_reference"] if ".tar#" in r)
    assert member.rpartition(":")[2].endswith(".png")
    assert image_ref(member, None).read_bytes()[:4] == b"\x89PNG"
    assert "## Image references" in (tmp_path / "out" / "references" / "README.md").read_text()


def test_a_truncated_shard_is_named(tmp_path: Path) -> None:
    write_shards(tmp_path / "pool", count=20, per_shard=10)
    shard = tmp_path / "pool" / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"00001\.tar: a truncated or corrupt tar shard"):
        scan_webdataset(tmp_path / "pool")


def test_a_member_that_is_not_an_image_is_dropped_by_verify_with_its_reason(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    write_shards(folder, count=10, per_shard=10)
    with tarfile.open(folder / "00001.tar", "w") as shard:
        for name, data in (("broken.jpg", b"not a jpeg"), ("broken.txt", b"a broken sample")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            import io

            shard.addfile(info, io.BytesIO(data))
    pipeline = tmp_path / "pool.yaml"
    pipeline.write_text(
        "executor: {kind: local}\nsteps:\n"
        f"  pool: {{step: ingest_webdataset, root: {folder}}}\n"
        "  checked: {step: verify_images, inputs: {dataset: pool}}\n"
    )
    api.run(pipeline, [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"])
    checked = LabeledDataset.read(tmp_path / "out" / "checked")
    assert checked.num_rows == 10
    removed = checked.removed.to_pylist()
    assert len(removed) == 1 and removed[0]["file_name"].startswith("00001.tar#")
    assert removed[0]["file_name"].endswith(":broken.jpg") and "decod" in removed[0]["reason"]
    json.dumps(removed[0], default=str)


def write_laion_embeddings(folder: Path, pool: Path, encoder: str, dim: int | None = None) -> None:
    """The clip-retrieval layout for ``pool``'s samples, embedded once by ``encoder`` (as LAION
    publishes them): two shards, rows in another order than the tar shards, float16."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rebalance.models.encoders import EncoderSpec, load_encoder

    samples = scan_webdataset(pool)
    refs = [image_ref(name, pool) for name in samples["file_name"].to_pylist()]
    vectors = load_encoder(EncoderSpec.parse(encoder), device="cpu").encode_images(refs)
    if dim is not None:
        vectors = vectors[:, :dim]
    order = np.random.default_rng(0).permutation(len(refs))
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    for shard, rows in enumerate(np.array_split(order, 2)):
        np.save(folder / "img_emb" / f"img_emb_{shard}.npy", vectors[rows].astype(np.float16))
        keys = [samples["key"][int(row)].as_py() for row in rows]
        pq.write_table(
            pa.table({"key": keys, "caption": [f"sample {key}" for key in keys]}),
            folder / "metadata" / f"metadata_{shard}.parquet",
        )


def laion_pipeline(tmp_path: Path, encoder: str) -> Path:
    pipeline = tmp_path / "laion.yaml"
    pipeline.write_text(
        "executor: {kind: local}\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_images_per_class: 2}}\n"
        f"  pool: {{step: ingest_webdataset, root: {tmp_path / 'pool'}}}\n"
        f"  pool_embedded: {{step: precomputed_embeddings, inputs: {{pool: pool}}, root: {tmp_path / 'laion'}, encoder: '{encoder}'}}\n"
        "  pool_index: {step: build_index, inputs: {embeddings: pool_embedded}}\n"
        "  retrieved: {step: retrieve, inputs: {dataset: train, pool: pool, index: pool_index},"
        " query: text, target: 4, device: cpu}\n"
    )
    return pipeline


def test_laion_layout_embeddings_drive_retrieval_without_an_embedding_step(tmp_path: Path) -> None:
    from rebalance.domain.classes import class_counts
    from rebalance.models.tiny import save_tiny_open_clip

    config, checkpoint = save_tiny_open_clip(tmp_path / "models")
    encoder = f"open_clip:{config}@{checkpoint}"
    write_shards(tmp_path / "pool", count=40, per_shard=15)
    write_laion_embeddings(tmp_path / "laion", tmp_path / "pool", encoder)
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    run = api.run(laion_pipeline(tmp_path, encoder), dirs)
    assert run.executed == ["train", "pool", "pool_embedded", "pool_index", "retrieved"]
    assert not (tmp_path / "cache" / "embed_images").exists()  # no pool image was embedded again
    retrieved = LabeledDataset.read(tmp_path / "out" / "retrieved")
    assert class_counts(retrieved)[0].tolist() == [4] * 10
    assert all(
        name.startswith("text: a photo of a")
        for name in retrieved.images["retrieval_query"].drop_null().to_pylist()
    )


def test_precomputed_embeddings_that_disagree_are_named(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rebalance.models.tiny import save_tiny_open_clip

    config, checkpoint = save_tiny_open_clip(tmp_path / "models")
    encoder = f"open_clip:{config}@{checkpoint}"
    write_shards(tmp_path / "pool", count=20, per_shard=10)
    # A dimension the query encoder does not have.
    write_laion_embeddings(tmp_path / "laion", tmp_path / "pool", encoder, dim=7)
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(DataError, match="the queries have .* dimensions but the pool index has 7"):
        api.run(laion_pipeline(tmp_path, encoder), dirs)
    # Vectors and metadata with different row counts.
    metadata = tmp_path / "laion" / "metadata" / "metadata_1.parquet"
    table = pq.read_table(metadata)
    pq.write_table(table.slice(1), metadata)
    with pytest.raises(DataError, match=r"img_emb_1\.npy has 10 rows but .*metadata_1\.parquet has 9"):
        api.run(laion_pipeline(tmp_path, encoder), dirs)
    np.save(tmp_path / "laion" / "img_emb" / "img_emb_1.npy", np.zeros((9, 7), np.float16))
    pq.write_table(pa.table({"key": ["nowhere"] * 9}), metadata)
    with pytest.raises(DataError, match="pool image\\(s\\) have no precomputed embedding"):
        api.run(laion_pipeline(tmp_path, encoder), dirs)


def test_a_parquet_pool_with_image_bytes_is_retrieved_from_and_exported(tmp_path: Path) -> None:
    # A Hugging Face `datasets` export: the Image feature stores {"bytes", "path"} structs in parquet.
    with open(DEMO / "pool_labels.csv") as handle:
        labels = {row["file_name"]: row["label"] for row in csv.DictReader(handle)}
    chosen = sorted(labels)[:200]
    (tmp_path / "pool").mkdir()
    hf = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": (DEMO / "pool" / name).read_bytes(), "path": name} for name in chosen],
            "id": [Path(name).stem for name in chosen],
        },
        features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")}),
    )
    hf.to_parquet(str(tmp_path / "pool" / "train-00000.parquet"), batch_size=64)
    pipeline = retrieval_pipeline(
        tmp_path, f"{{step: ingest_parquet_pool, root: {tmp_path / 'pool'}, key_column: id}}"
    )
    api.run(pipeline, [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"])
    pool = LabeledDataset.read(next((tmp_path / "cache" / "verify_images").glob("*/meta.json")).parent)
    assert pool.num_rows == 200 and pool.removed.num_rows == 0
    assert pool.images["file_name"][0].as_py() == "train-00000.parquet#0/0:image"
    exported = datasets.load_from_disk(str(tmp_path / "out" / "export"))["train"]
    retrieved = exported.filter(lambda row: row["source"] == "retrieved")
    assert retrieved.num_rows > 0
    row = retrieved.cast_column("image", datasets.Image(decode=False))[0]
    key = next(r["key"] for r in pool.images.to_pylist() if r["file_name"] == row["pool_file_name"])
    assert row["image"]["bytes"] == (DEMO / "pool" / f"{key}.png").read_bytes()


def test_precomputed_vectors_are_gathered_into_pool_order_a_chunk_at_a_time(tmp_path: Path) -> None:
    import dataclasses

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rebalance.domain.artifacts import Embeddings
    from rebalance.io.memmaps import save_rows
    from rebalance.steps.embed import precomputed_embeddings

    keys = [f"{number:05d}" for number in range(50)]
    pool = LabeledDataset.unlabeled(
        [f"{key}.jpg" for key in keys], split="pool", source="pool", image_root=None
    )
    pool = dataclasses.replace(pool, images=pool.images.append_column("key", pa.array(keys)))
    vectors = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float16)
    # Three shards in another order than the pool, one holding a sample the pool does not have.
    order = np.random.default_rng(1).permutation(50)
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    for shard, rows in enumerate(np.array_split(order, 3)):
        shard_keys = [keys[row] for row in rows] + ([f"elsewhere-{shard}"] if shard == 1 else [])
        shard_vectors = np.concatenate([vectors[rows], np.ones((len(shard_keys) - len(rows), 6), np.float16)])
        np.save(tmp_path / "img_emb" / f"img_emb_{shard}.npy", shard_vectors)
        pq.write_table(pa.table({"key": shard_keys}), tmp_path / "metadata" / f"metadata_{shard}.parquet")

    gathered = precomputed_embeddings(pool, root=tmp_path, encoder="published")
    assert gathered.vectors.shape == (50, 6) and np.array_equal(gathered.vectors[7:19], vectors[7:19])
    (tmp_path / "entry").mkdir()
    gathered.write(tmp_path / "entry")
    stored = Embeddings.read(tmp_path / "entry")
    assert np.array_equal(stored.vectors, vectors) and stored.vectors.dtype == np.float16
    save_rows(tmp_path / "small-chunks.npy", gathered.vectors, chunk_rows=7)
    assert (tmp_path / "small-chunks.npy").read_bytes() == (tmp_path / "entry" / "vectors.npy").read_bytes()

    broken = np.load(tmp_path / "img_emb" / "img_emb_2.npy")
    broken[3] = np.nan
    np.save(tmp_path / "img_emb" / "img_emb_2.npy", broken)
    with pytest.raises(DataError, match=r"img_emb_2\.npy: 1 row\(s\) are NaN or infinite"):
        precomputed_embeddings(pool, root=tmp_path, encoder="published")
