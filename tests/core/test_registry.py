from __future__ import annotations

import pytest

from rebalance.core.registry import all_steps, step
from rebalance.domain.artifacts import ClassStats, Embeddings, LabeledDataset


def test_builtin_steps_have_typed_inputs_params_and_summaries() -> None:
    steps = all_steps()
    assert {"ingest_image_folder", "ingest_coco", "verify_images", "class_stats", "export_hf"} <= set(steps)
    export = steps["export_hf"]
    assert [(i.name, i.artifact_type, i.optional) for i in export.inputs] == [
        ("dataset", LabeledDataset, False),
        ("original", LabeledDataset, True),
        ("test", LabeledDataset, True),
        ("embeddings", Embeddings, True),
        ("test_embeddings", Embeddings, True),
    ]
    assert export.param("num_shards").default == 1 and export.summary
    assert steps["ingest_coco"].param("annotations").content_hashed
    assert steps["verify_images"].shardable


def test_a_shardable_step_must_consume_and_produce_shardable_artifacts() -> None:
    with pytest.raises(TypeError, match="shardable first input"):

        @step("test_bad_sharded", shardable=True)
        def bad(dataset: LabeledDataset) -> ClassStats:
            raise NotImplementedError


def test_varargs_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"\*args"):

        @step("test_varargs")
        def bad(*datasets: LabeledDataset) -> LabeledDataset:
            raise NotImplementedError
