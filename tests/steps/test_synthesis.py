from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rebalance.core.artifacts import Embeddings, LabeledDataset
from rebalance.steps.embed import gather_embeddings
from rebalance.steps.export import export_hf
from rebalance.steps.stats import class_counts, stage_changes
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
