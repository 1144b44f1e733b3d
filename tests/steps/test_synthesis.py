from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rebalance.domain.artifacts import Embeddings, LabeledDataset
from rebalance.domain.classes import class_counts
from rebalance.domain.ledger import stage_changes
from rebalance.steps.embed import gather_embeddings
from rebalance.steps.export import export_hf
from rebalance.steps.synthesis import synthesize_features


@pytest.fixture
def grown(tmp_path: Path):
    """Counts 12 / 6 / 3, where 2 of class 2's rows were retrieved: the median of the originals is 6."""
    from PIL import Image

    labels = [0] * 12 + [1] * 6 + [2] * 3
    for i in range(len(labels)):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i}.png")
    dataset = LabeledDataset.classification(
        [f"{i}.png" for i in range(21)], labels, ["a", "b", "c"], image_root=str(tmp_path)
    )
    sources = pa.array(["original"] * 19 + ["retrieved"] * 2)
    dataset = LabeledDataset(
        dataset.images.set_column(5, "source", sources),
        dataset.annotations,
        dataset.categories,
        dataset.removed,
        dataset.image_root,
    )
    rng = np.random.default_rng(0)
    vectors = (np.eye(8, dtype=np.float32)[labels] + rng.normal(0, 0.1, (21, 8))).astype(np.float32)
    return dataset, Embeddings(np.arange(21), vectors, "test-encoder")


def test_smote_fills_what_retrieval_left_with_provenance(grown) -> None:
    dataset, embeddings = grown
    result = synthesize_features(dataset, embeddings, method="smote", target="median", seed=4)
    # Original counts 12 / 6 / 1 -> median 6; class 2 has 3 rows (1 original + 2 retrieved): 3 more.
    assert class_counts(result)[0].tolist() == [12, 6, 6]
    added = result.images.filter(pc.equal(result.images["source"], "synthetic")).to_pylist()
    assert len(added) == 3 and all(
        row["file_name"] is None and row["synthesis_method"] == "smote" for row in added
    )
    assert all(
        row["synthesis_parent"] in (18, 19, 20) and row["synthesis_neighbor"] in (18, 19, 20) for row in added
    )
    assert all(row["synthesis_seed"] == 4 and 0 <= row["synthesis_lambda"] < 1 for row in added)
    gathered = gather_embeddings(result, embeddings)
    for position, row in enumerate(added, start=21):
        parent, neighbour = (
            embeddings.vectors[row["synthesis_parent"]],
            embeddings.vectors[row["synthesis_neighbor"]],
        )
        np.testing.assert_allclose(
            gathered.vectors[position], parent + row["synthesis_lambda"] * (neighbour - parent), atol=1e-6
        )
    assert result.categories["frequency"].to_pylist() == ["c", "r", "r"]  # buckets frozen before adding
    assert synthesize_features(dataset, embeddings, seed=4).images.equals(result.images)


def test_gaussian_synthesis_and_the_export_of_rows_without_images(grown, tmp_path: Path) -> None:
    dataset, embeddings = grown
    result = synthesize_features(dataset, embeddings, method="gaussian", target=10, lof_neighbors=None)
    assert class_counts(result)[0].tolist() == [12, 10, 10]
    assert {k: v.tolist() for k, v in stage_changes(dataset, result).items()} == {"+synthetic": [0, 4, 7]}
    export = export_hf(result, embeddings=gather_embeddings(result, embeddings))
    export.write(tmp_path / "export")
    loaded = datasets.load_from_disk(str(tmp_path / "export"))["train"]
    synthetic = loaded.filter(lambda row: row["source"] == "synthetic")
    assert synthetic.num_rows == 11 and synthetic[0]["image"] is None and len(synthetic[0]["embedding"]) == 8
    assert "feature" not in loaded.column_names  # the vector is the `embedding` column


@pytest.fixture(scope="module")
def tiny_generation_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rebalance.models.tiny import save_tiny_open_clip, save_tiny_stable_diffusion

    root = tmp_path_factory.mktemp("generation")
    config, checkpoint = save_tiny_open_clip(root / "open_clip")
    return {"config": config, "checkpoint": checkpoint, "diffusion": save_tiny_stable_diffusion(root / "sd")}


def generation_pipeline(tmp_path: Path, models: dict[str, Path], synthesis: str) -> Path:
    from tests.helpers import REPO

    train = tmp_path / "train"
    for name, count in (("bag", 4), ("coat", 2)):
        (train / name).mkdir(parents=True)
        for png in sorted((REPO / "data" / "fashion_mnist_lt" / "train" / name).glob("*.png"))[:count]:
            (train / name / png.name).write_bytes(png.read_bytes())
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""seed: 0
cache_dir: {tmp_path / "cache"}
output_dir: {tmp_path / "out"}
executor: {{kind: local}}
steps:
  train: {{step: ingest_image_folder, root: {train}}}
  embedded:
    step: embed_images
    inputs: {{dataset: train}}
    encoder: open_clip
    model: {models["config"]}
    pretrained: {models["checkpoint"]}
    device: cpu
  generated:
    step: synthesize_images
    inputs: {{dataset: train, embeddings: embedded}}
    model: {models["diffusion"]}
    image_size: 32
    steps: 2
    guidance: 1.0
    device: cpu
{synthesis}
  generated_embedded: {{step: gather_embeddings, inputs: {{dataset: generated, embeddings: embedded}}}}
  export: {{step: export_hf, inputs: {{dataset: generated, original: train, embeddings: generated_embedded}}}}
"""
    )
    return path


def test_text_to_image_synthesis_makes_filtered_seeded_images_with_provenance(
    tiny_generation_models, tmp_path: Path
) -> None:
    from rebalance import api

    # A random CLIP scores everything alike, so the filter is off here and on in the next test.
    pipeline = generation_pipeline(
        tmp_path,
        tiny_generation_models,
        "    min_clip_score: null\n    real_similarity: null\n    target: max",
    )
    first = api.run(pipeline)
    assert first.executed == ["train", "embedded", "generated", "generated_embedded", "export"]
    generated = LabeledDataset.read(
        next((tmp_path / "cache" / "synthesize_images").glob("*/meta.json")).parent
    )
    assert class_counts(generated)[0].tolist() == [4, 4]  # coat: 2 real + 2 generated
    rows = generated.images.filter(pc.equal(generated.images["source"], "synthetic")).to_pylist()
    assert len(rows) == 2 and all(Path(r["file_name"]).is_file() for r in rows)
    assert {r["synthesis_prompt"] for r in rows} == {"a photo of a coat."} and len(
        {r["synthesis_seed"] for r in rows}
    ) == 2
    # ceil(2 × 1.5) = 3 candidates: the lowest CLIP score is dropped because the quota is met.
    assert generated.removed["reason"].to_pylist() == ["quota of 2 already met by higher CLIP scores"]
    # One image regenerated alone from its recorded seed is the same image.
    from rebalance.models.diffusion import DiffusionGenerator

    again = DiffusionGenerator(str(tiny_generation_models["diffusion"]), device="cpu", steps=2, guidance=1.0)
    image = again.text_to_image([rows[1]["synthesis_prompt"]], [rows[1]["synthesis_seed"]], 32)[0]
    from PIL import Image

    assert np.array_equal(np.asarray(image), np.asarray(Image.open(rows[1]["file_name"]).convert("RGB")))
    loaded = datasets.load_from_disk(str(tmp_path / "out" / "export"))["train"]
    first_image = loaded.filter(lambda r: r["source"] == "synthetic")[0]["image"]
    assert first_image.size == (32, 32)

    assert api.run(pipeline).executed == []  # a rerun is a cache hit
    reseeded = api.run(pipeline, ["seed=1"])
    assert "generated" in reseeded.executed
    # A new pipeline seed draws new per-image seeds, hence new images.
    exported = datasets.load_from_disk(str(tmp_path / "out" / "export"))["train"]
    synthetic = exported.filter(lambda r: r["source"] == "synthetic")
    assert set(synthetic["synthesis_seed"]).isdisjoint({r["synthesis_seed"] for r in rows})
    assert not np.array_equal(np.asarray(synthetic[0]["image"]), np.asarray(first_image))


def test_filters_and_image_to_image_with_an_unreadable_parent(tiny_generation_models, tmp_path: Path) -> None:
    from rebalance import api
    from rebalance.steps.synthesis import synthesize_images

    pipeline = generation_pipeline(
        tmp_path,
        tiny_generation_models,
        "    mode: img2img\n    target: max\n    strength: 0.5\n    real_similarity: [0.0, 1.0]\n    min_clip_score: null",
    )
    run = api.run(pipeline)
    entries = {step["id"]: tmp_path / "cache" / step["step"] / step["key"] for step in run.manifest["steps"]}
    generated = LabeledDataset.read(entries["generated"])
    made = generated.images.filter(pc.equal(generated.images["source"], "synthetic")).to_pylist()
    coat_ids = set(
        generated.images.filter(pc.match_substring(generated.images["file_name"], "coat"))[
            "image_id"
        ].to_pylist()
    )
    assert len(made) == 2 and all(
        r["synthesis_method"] == "img2img" and r["synthesis_parent"] in coat_ids for r in made
    )

    train, embeddings = LabeledDataset.read(entries["train"]), Embeddings.read(entries["embedded"])
    sorted((tmp_path / "train" / "coat").glob("*.png"))[0].write_bytes(
        b"not a png"
    )  # one parent is now unreadable
    common = dict(
        model=str(tiny_generation_models["diffusion"]),
        mode="img2img",
        target="max",
        image_size=32,
        steps=2,
        guidance=1.0,
        device="cpu",
    )
    strict = synthesize_images(train, embeddings, min_clip_score=0.99, **common)
    reasons = strict.removed["reason"].to_pylist()
    assert (
        sum(r.startswith("parent image") and "unreadable" in r and r.endswith("skipped") for r in reasons)
        == 2
    )
    assert sum(r.startswith("off-prompt: CLIP score") for r in reasons) == 1  # nothing reaches 0.99
    assert class_counts(strict)[0].tolist() == [4, 2] and not strict.files
    assert {k: v.tolist() for k, v in stage_changes(train, strict).items()} == {
        "+synthetic": [0, 3],
        "-synthesize_images": [0, -3],
    }
    banded = synthesize_images(train, embeddings, min_clip_score=None, real_similarity=(-1.0, -0.5), **common)
    assert all(
        r.startswith(("parent image", "near copy: cosine")) for r in banded.removed["reason"].to_pylist()
    )


def test_a_moved_cache_still_hits_and_clearing_the_image_step_reruns_what_reads_its_images(
    tiny_generation_models, tmp_path: Path
) -> None:
    import shutil

    from rebalance import api

    pipeline = generation_pipeline(
        tmp_path,
        tiny_generation_models,
        "    min_clip_score: null\n    real_similarity: null\n    target: max",
    )
    # A consumer whose rows point at the generated images inside the synthesis step's entry.
    pipeline.write_text(
        pipeline.read_text()
        + "  sampled: {step: repeat_factors, inputs: {dataset: generated}, method: sqrt}\n"
    )
    api.run(pipeline)
    moved = tmp_path / "elsewhere" / "cache"
    shutil.move(tmp_path / "cache", moved)
    again = api.run(pipeline, [f"cache_dir={moved}"])
    assert again.executed == []
    entries = {step["id"]: moved / step["step"] / step["key"] for step in again.manifest["steps"]}
    sampled = LabeledDataset.read(entries["sampled"])
    synthetic = sampled.images.filter(pc.equal(sampled.images["source"], "synthetic")).to_pylist()
    assert len(synthetic) == 2
    for row in synthetic:
        ref = sampled.image_ref(row["file_name"])
        assert ref.path.is_relative_to(moved / "synthesize_images") and ref.read_bytes()[:4] == b"\x89PNG"

    api.cache_clear(moved, "synthesize_images")
    reasons = {plan.step.id: plan.reason for plan in api.plan(pipeline, [f"cache_dir={moved}"])}
    assert reasons["generated"] == "not in cache"
    assert reasons["sampled"].startswith("reads images of a cleared cache entry: synthesize_images/")
    assert reasons["train"] == reasons["embedded"] == "cached"
    rerun = api.run(pipeline, [f"cache_dir={moved}"])
    assert {"generated", "sampled"} <= set(rerun.executed)
