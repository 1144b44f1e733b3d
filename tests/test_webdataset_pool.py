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
from rebalance.core.artifacts import LabeledDataset
from rebalance.errors import DataError
from rebalance.io.references import image_ref
from rebalance.io.webdataset import scan_webdataset
from tests.conftest import REPO

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
    pipeline = tmp_path / "pool.yaml"
    pipeline.write_text(
        "executor: {kind: local}\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {DEMO / 'train'}, max_images_per_class: 20}}\n"
        f"  pool: {{step: ingest_webdataset, root: {tmp_path / 'pool'}, reference_labels: {tmp_path / 'labels.csv'}}}\n"
        "  checked: {step: verify_images, inputs: {dataset: pool}}\n"
        "  embedded: {step: embed_pixels_pca, inputs: {dataset: train}}\n"
        "  pool_embedded: {step: embed_pixels_pca, inputs: {dataset: checked, fit: train}}\n"
        "  index: {step: build_index, inputs: {embeddings: pool_embedded}}\n"
        "  retrieved: {step: retrieve, inputs: {dataset: train, pool: checked, index: index, embeddings: embedded},"
        " query: image, image_query: examples, target: max, max_per_class: 5}\n"
        "  export: {step: export_hf, inputs: {dataset: retrieved, original: train}}\n"
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
