"""The open_clip, transformers and sentence encoders, on tiny random models and the real MiniLM."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from rebalance import api
from rebalance.domain.artifacts import Embeddings, LabeledDataset, VectorIndex
from rebalance.domain.classes import class_counts
from rebalance.errors import RebalanceError
from rebalance.models.encoders import EncoderSpec, load_encoder
from rebalance.models.tiny import save_tiny_open_clip, save_tiny_transformers_clip
from tests.helpers import REPO

DEMO = REPO / "data" / "fashion_mnist_lt"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    config, checkpoint = save_tiny_open_clip(root / "open_clip")
    return {
        "config": config,
        "checkpoint": checkpoint,
        "transformers": save_tiny_transformers_clip(root / "hf"),
    }


def small_splits() -> tuple[LabeledDataset, LabeledDataset]:
    """3 training and 2 test images a class from the demo data."""
    from rebalance.steps.ingest import ingest_image_folder

    train = ingest_image_folder(root=DEMO / "train", max_images_per_class=3)
    return train, ingest_image_folder(root=DEMO / "test", split="test", max_images_per_class=2)


def clip_options(models: dict[str, Path]) -> dict[str, str]:
    return {
        "encoder": "open_clip",
        "model": str(models["config"]),
        "pretrained": str(models["checkpoint"]),
        "device": "cpu",
    }


def small_pool(tmp_path: Path, count: int = 30) -> Path:
    pool = tmp_path / "pool"
    pool.mkdir()
    for png in sorted((DEMO / "pool").glob("*.png"))[:count]:
        shutil.copy(png, pool / png.name)
    return pool


def write_pipeline(
    tmp_path: Path, encoder_lines: str, retrieve_lines: str, image_queries: bool = True
) -> Path:
    embeddings = ", embeddings: embedded" if image_queries else ""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""seed: 0
cache_dir: {tmp_path / "cache"}
output_dir: {tmp_path / "out"}
executor: {{kind: local, shard_rows: 7}}
steps:
  train: {{step: ingest_image_folder, root: {DEMO / "train"}, max_images_per_class: 2}}
  pool: {{step: ingest_pool, root: {small_pool(tmp_path)}}}
  embedded:
    step: embed_images
    inputs: {{dataset: train}}
{encoder_lines}
  pool_embedded:
    step: embed_images
    inputs: {{dataset: pool}}
{encoder_lines}
  pool_index: {{step: build_index, inputs: {{embeddings: pool_embedded}}}}
  retrieved:
    step: retrieve
    inputs: {{dataset: train, pool: pool, index: pool_index{embeddings}}}
    target: 4
    device: cpu
{retrieve_lines}
"""
    )
    return path


def test_open_clip_embeds_in_shards_caches_and_retrieves(tiny_models, tmp_path: Path) -> None:
    encoder = (
        f"    encoder: open_clip\n    model: {tiny_models['config']}\n"
        f"    pretrained: {tiny_models['checkpoint']}\n    device: cpu\n"
    )
    # A random model maps all images close together: the near-copy check would reject every item,
    # and the precision gate would stop every class.
    pipeline = write_pipeline(
        tmp_path, encoder, "    query: both\n    duplicate_threshold: null\n    min_precision: null"
    )
    first = api.run(pipeline)
    assert first.executed == ["train", "pool", "embedded", "pool_embedded", "pool_index", "retrieved"]
    entry = next((tmp_path / "cache" / "embed_images").glob("*/ids.npy")).parent
    vectors = Embeddings.read(entry)
    assert vectors.encoder == f"open_clip:{tiny_models['config']}@{tiny_models['checkpoint']}"
    np.testing.assert_allclose(np.linalg.norm(vectors.vectors, axis=1), 1, rtol=1e-5)
    retrieved = LabeledDataset.read(tmp_path / "out" / "retrieved")
    assert class_counts(retrieved)[0].tolist() == [4] * 10
    assert set(retrieved.images["retrieval_query"].drop_null().to_pylist()) <= {
        f"text: a photo of a {name}. + centroid of 2 image(s)"
        for name in (
            "ankle boot",
            "bag",
            "coat",
            "dress",
            "pullover",
            "sandal",
            "shirt",
            "sneaker",
            "t-shirt top",
            "trouser",
        )
    }
    index = VectorIndex.read(next((tmp_path / "cache" / "build_index").glob("*/index.faiss")).parent)
    assert index.index.ntotal == 30 and index.meta["factory"] == "Flat"

    assert api.run(pipeline).executed == []  # a second run loads the index instead of rebuilding it
    # New weights in the same checkpoint file re-run everything embedded with it.
    save_tiny_open_clip(tiny_models["checkpoint"].parent, seed=1)
    assert api.run(pipeline).executed == ["embedded", "pool_embedded", "pool_index", "retrieved"]


def test_transformers_clip_embeds_and_answers_text_queries(tiny_models, tmp_path: Path) -> None:
    encoder = f"    encoder: transformers\n    model: {tiny_models['transformers']}\n    device: cpu\n"
    # Text queries alone: without the dataset's embeddings there is no near-copy check, which a
    # random model (all images alike) would fail.
    pipeline = write_pipeline(
        tmp_path, encoder, "    query: text\n    templates: ['a photo of a {}.']", False
    )
    api.run(pipeline)
    retrieved = LabeledDataset.read(tmp_path / "out" / "retrieved")
    added = retrieved.images.filter(pc.equal(retrieved.images["source"], "retrieved"))
    assert added.num_rows == 20 and len(set(added["pool_image_id"].to_pylist())) == 20
    assert "text: a photo of a ankle boot." in added["retrieval_query"].to_pylist()


def test_encoders_are_deterministic_and_normalised(tiny_models) -> None:
    paths = sorted((DEMO / "pool").glob("*.png"))[:5]
    spec = EncoderSpec("open_clip", str(tiny_models["config"]), str(tiny_models["checkpoint"]))
    first = load_encoder(spec, device="cpu", batch_size=2).encode_images(paths)
    second = load_encoder(spec, device="cpu", batch_size=5).encode_images(paths)
    np.testing.assert_allclose(first, second, atol=1e-6)
    texts = load_encoder(
        EncoderSpec("transformers", str(tiny_models["transformers"])), device="cpu"
    ).encode_texts(["a", "a dog"])
    assert texts.shape == (2, 16) and np.allclose(np.linalg.norm(texts, axis=1), 1)


def test_the_packaged_minilm_embeds_meaning() -> None:
    encoder = load_encoder(EncoderSpec.parse("sentence:all-MiniLM-L6-v2"), device="cpu")
    dog, puppy, market = encoder.encode_texts(
        ["a photo of a dog", "a picture of a puppy", "stock market prices fell"]
    )
    assert dog @ puppy > dog @ market + 0.3
    # Texts are batched longest first; rows come back in the order given, as if each were alone.
    texts = ["a dog", "a very long caption about a small brown dog in a big green park", "cat", "a red car"]
    batched = load_encoder(EncoderSpec.parse("sentence:all-MiniLM-L6-v2"), device="cpu", batch_size=2)
    alone = np.stack([encoder.encode_texts([text])[0] for text in texts])
    np.testing.assert_allclose(batched.encode_texts(texts), alone, atol=1e-5)
    with pytest.raises(RebalanceError, match="text-only encoder"):
        encoder.encode_images([])


def test_spec_strings_round_trip_and_missing_models_are_clear_errors(tmp_path: Path) -> None:
    spec = EncoderSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert str(spec) == "open_clip:ViT-B-32@laion2b_s34b_b79k" and EncoderSpec.parse(str(spec)) == spec
    assert EncoderSpec.parse("transformers:openai/clip-vit-base-patch32").pretrained is None
    with pytest.raises(RebalanceError, match="cannot load the transformers model .*Pass a local path"):
        load_encoder(EncoderSpec("transformers", str(tmp_path / "missing")), device="cpu").encode_texts(["x"])
    with pytest.raises(RebalanceError, match="cannot load the open_clip model"):
        load_encoder(EncoderSpec("open_clip", str(tmp_path / "missing.json")), device="cpu").encode_texts(
            ["x"]
        )


def test_embeddings_can_be_stored_as_float16(tiny_models) -> None:
    from rebalance.steps.embed import embed_images
    from rebalance.steps.ingest import ingest_pool

    pool = ingest_pool(root=DEMO / "pool")
    pool = LabeledDataset(
        pool.images.slice(0, 6), pool.annotations, pool.categories, pool.removed, pool.image_root
    )
    options = clip_options(tiny_models)
    full, half = embed_images(pool, **options), embed_images(pool, **options, dtype="float16")
    assert half.vectors.dtype == np.float16 and full.vectors.dtype == np.float32
    np.testing.assert_allclose(half.vectors.astype(np.float32), full.vectors, atol=1e-3)


def test_train_probe_starts_from_the_zero_shot_classifier_of_the_clip_encoder(tiny_models) -> None:
    from rebalance.steps.embed import embed_images, embed_pixels_pca
    from rebalance.steps.train import train_probe

    train, test = small_splits()
    options = clip_options(tiny_models)
    report = train_probe(
        train,
        embed_images(train, **options),
        test,
        embed_images(test, **options),
        init="zero_shot",
        epochs=2,
        device="cpu",
    )
    assert report.metrics["test_samples"] == 20 and 0 <= report.metrics["top1"] <= 1
    with pytest.raises(
        RebalanceError, match="embeddings made by 'pixels_pca' have no model that embeds text"
    ):
        train_probe(
            train,
            embed_pixels_pca(train),
            test,
            embed_pixels_pca(test, train),
            init="zero_shot",
            device="cpu",
        )


def test_finetune_encoder_trains_the_tower_and_reports_per_bucket(tiny_models) -> None:
    import torch

    from rebalance.steps.train import finetune_encoder
    from rebalance.train.finetune import finetune
    from rebalance.train.trainer import HeadConfig

    train, test = small_splits()
    options = clip_options(tiny_models)
    report = finetune_encoder(train, test, **options, epochs=2, batch_size=8)
    assert report.metrics["config"]["finetuned"] and len(report.metrics["loss_per_epoch"]) == 2
    assert report.metrics["train_samples"] == 30 and set(report.metrics["bucket_accuracy"]) == {
        "rare",
        "common",
        "frequent",
    }

    tower = load_encoder(
        EncoderSpec("open_clip", options["model"], options["pretrained"]), device="cpu", keep=False
    ).image_tower()
    before = [p.detach().clone() for p in tower.module.parameters()]
    paths = [train.image_ref(n) for n in train.images["file_name"].to_pylist()]
    finetune(
        tower,
        paths,
        train.single_labels("test"),
        10,
        HeadConfig(epochs=1, batch_size=8, device="cpu"),
        encoder_lr=1e-3,
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, tower.module.parameters(), strict=True))


def test_rebalance_train_starts_from_a_zero_shot_classifier_on_an_export(tiny_models, tmp_path: Path) -> None:
    from rebalance.steps.embed import embed_images
    from rebalance.steps.export import export_hf
    from tests.helpers import invoke

    train, test = small_splits()
    options = clip_options(tiny_models)
    export = export_hf(
        train,
        test=test,
        embeddings=embed_images(train, **options),
        test_embeddings=embed_images(test, **options),
    )
    export.write(tmp_path / "export")
    spec = f"open_clip:{tiny_models['config']}@{tiny_models['checkpoint']}"
    result = invoke(
        "train", str(tmp_path / "export"), "--zero-shot", spec, "--epochs", "2", "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert "zero-shot start" in result.output
    wrong = invoke(
        "train", str(tmp_path / "export"), "--zero-shot", f"transformers:{tiny_models['transformers']}"
    )
    assert (
        wrong.exit_code == 3 and "embeds text in 16 dims but the export's embeddings have 32" in wrong.output
    )
