"""pipelines/lvis.yaml itself, run on a small LVIS-format fixture with tiny models (overrides only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from rebalance import api
from rebalance.core.config import load_pipeline
from rebalance.domain.artifacts import LabeledDataset
from rebalance.domain.classes import class_counts
from rebalance.errors import ConfigError
from tests.helpers import raw_masks, tree_digest
from tests.steps.lvis_fixture import LVIS, lvis_overrides


def check_detector_export(tmp_path: Path) -> None:
    """export_coco's LVIS JSON loads in lvis-api and pycocotools, its per-category image counts are
    the ledger's, and the masks of the annotations no step touched are the input's bytes."""
    from lvis import LVIS
    from pycocotools.coco import COCO

    out = tmp_path / "out" / "detector_data"
    instances, labels = LVIS(str(out / "instances.json")), LVIS(str(out / "image_labels.json"))
    COCO(str(out / "instances.json"))
    sampled = LabeledDataset.read(next((tmp_path / "cache" / "repeat_factors").iterdir()))
    images, _ = class_counts(sampled)
    from_files = {c: len(set(instances.cat_img_map.get(c, []))) for c in instances.cats}
    for image in labels.dataset["images"]:
        for category in image["pos_category_ids"]:
            from_files[category] += 1
    assert [from_files[c] for c in sampled.categories["category_id"].to_pylist()] == images.tolist()
    assert {image["rebalance"]["source"] for image in labels.dataset["images"]} == {"retrieved", "synthetic"}
    source = raw_masks(tmp_path / "data" / "lvis_v1_train.json")
    written = raw_masks(out / "instances.json")
    assert written and all(written[i] == source[i] for i in written)


def test_lvis_pipeline_without_its_data_names_every_missing_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(LVIS)
    message = str(caught.value)
    for key in (
        "steps.train.annotations",
        "steps.val.annotations",
        "steps.corpus.captions",
        "steps.pool.root",
    ):
        assert f"{key}: path does not exist" in message


@pytest.mark.slow
def test_the_lvis_pipeline_runs_end_to_end_on_the_fixture(tmp_path: Path) -> None:
    overrides = lvis_overrides(tmp_path)
    first = api.run(LVIS, overrides)
    steps = [step["id"] for step in first.manifest["steps"]]
    assert first.executed == steps and len(steps) == 24
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert set(report["stages"]) >= {"after retrieved", "after synthetic", "final"}
    # The gallery shows the retrieved and generated images (multi-label data: no test errors).
    gallery = report["gallery"]
    assert gallery["found"]["retrieved"] > 0 and gallery["shown"]["synthetic"] > 0
    assert gallery["found"]["test errors"] == 0 and gallery["thumbnails"] > 0
    weight, files = api.report_weight(tmp_path / "out" / "report" / "report.html")
    print(f"LVIS fixture report: {weight:,} bytes in {files} files, gallery {gallery}")
    baseline = json.loads((tmp_path / "cache" / "train_probe").glob("*/metrics.json").__next__().read_text())
    assert baseline["metric"] == "average_precision" and baseline["mean_class_accuracy"] is not None
    exported = datasets.load_from_disk(str(tmp_path / "out" / "export"))["train"]
    sources = set(exported["source"])
    assert {"original", "retrieved", "synthetic"} <= sources and "objects" in exported.column_names
    masks = [json.loads(o["segmentation"]) for row in exported["objects"] for o in row if o["segmentation"]]
    assert masks and any(isinstance(m, dict) for m in masks) and any(isinstance(m, list) for m in masks)
    check_detector_export(tmp_path)
    assert api.run(LVIS, overrides).executed == []

    # Determinism: from an empty cache (at the same place: exported paths point into it), a second
    # run gives byte-identical outputs.
    first_outputs = tree_digest(tmp_path / "out")
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(tmp_path / "out")
    assert len(api.run(LVIS, overrides).executed) == 24
    assert tree_digest(tmp_path / "out") == first_outputs
