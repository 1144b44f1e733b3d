"""ADR entity thinning on a captioned dataset, end to end: ingest with captions → entity statistics
→ thinning → export, run by the pipeline runner as `rebalance run` does."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import pytest

from rebalance import api
from rebalance.domain.artifacts import EntityStatistics, LabeledDataset
from rebalance.errors import DataError
from rebalance.steps.frequency import entity_statistics
from rebalance.steps.ingest import ingest_image_folder
from tests.helpers import REPO

DEMO_TRAIN = REPO / "data" / "fashion_mnist_lt" / "train"


def captioned_folder(tmp_path: Path) -> tuple[Path, Path]:
    """trouser 120 images (frequent; every tenth caption also mentions a belt), coat 30, bag 6."""
    root, rows = tmp_path / "images", []
    for name, count in (("trouser", 120), ("coat", 30), ("bag", 6)):
        (root / name).mkdir(parents=True)
        for number, png in enumerate(sorted((DEMO_TRAIN / name).glob("*.png"))[:count]):
            shutil.copy(png, root / name / png.name)
            caption = {
                "trouser": "grey trousers and a leather belt" if number % 10 == 0 else "a pair of pants",
                "coat": "a warm coat",
                "bag": "a handbag",
            }[name]
            rows.append({"file_name": f"{name}/{png.name}", "caption": caption})
    captions = tmp_path / "captions.csv"
    with captions.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file_name", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return root, captions


def test_captioned_dataset_is_thinned_by_its_entities_and_exported(
    tmp_path: Path, run_dirs: list[str]
) -> None:
    root, captions = captioned_folder(tmp_path)
    entities = tmp_path / "entities.json"
    entities.write_text(
        json.dumps(
            {"trousers": ["trousers", "pants"], "belt": ["belt"], "coat": ["coat"], "bag": ["handbag"]}
        )
    )
    pipeline = tmp_path / "adr.yaml"
    pipeline.write_text(
        "name: adr\nseed: 0\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {root}, captions: {captions}}}\n"
        f"  statistics: {{step: entity_statistics, inputs: {{dataset: train}}, entities: {entities}}}\n"
        "  thinned: {step: entity_thinning, inputs: {dataset: train, statistics: statistics}}\n"
        "  export: {step: export_hf, inputs: {dataset: thinned, original: train}}\n"
    )
    steps = {step["id"]: step for step in api.run(pipeline, run_dirs).manifest["steps"]}
    cached = {name: tmp_path / "cache" / step["step"] / step["key"] for name, step in steps.items()}
    statistics = EntityStatistics.read(cached["statistics"])
    assert statistics.summary == {"images": 156, "captioned_images": 156}
    by_entity = dict(zip(*statistics.entities.select(["entity", "images"]).to_pydict().values(), strict=True))
    assert by_entity == {"trousers": 120, "belt": 12, "coat": 30, "bag": 6}
    assert statistics.pairs.to_pylist() == [{"first": "trousers", "second": "belt", "images": 12}]
    # tau is the median entity frequency, (12 + 30) / 2 = 21: trousers (120) are over-represented,
    # the belt (12) is a tail entity; coat and bag images are not in the frequent bucket.
    removed = LabeledDataset.read(cached["thinned"]).removed.to_pylist()
    kept_with = "every entity over-represented (trousers: 120 images, tau 21), kept with p = 0.1750"
    assert 60 < len(removed) < 110 and all(
        row["reason"] == f"entity thinning: {kept_with}" for row in removed
    )
    assert all(row["file_name"].startswith("trouser/") for row in removed)
    belts = {row["file_name"] for row in csv.DictReader(captions.open()) if "belt" in row["caption"]}
    assert len(belts) == 12 and not belts & {row["file_name"] for row in removed}
    export = tmp_path / "out" / "export"
    exported = datasets.load_from_disk(str(export))
    assert exported["train"].num_rows == 156 - len(removed)
    card = (export / "README.md").read_text()
    assert "entity_thinning" in card and kept_with in card


def test_bad_captions_and_entities_are_clear_errors(tmp_path: Path) -> None:
    root, captions = captioned_folder(tmp_path)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file_name,caption\nnot/there.png,a dog\n")
    with pytest.raises(DataError, match=r"wrong.csv: 1 file_name value\(s\) match no image of the dataset"):
        ingest_image_folder(root=root, captions=wrong)
    dataset = ingest_image_folder(root=root, captions=captions)
    empty = tmp_path / "entities.json"
    empty.write_text(json.dumps({"belt": ["belt", ""]}))
    with pytest.raises(DataError, match="entity 'belt' has an empty phrase"):
        entity_statistics(dataset, entities=empty)
    empty.write_text(json.dumps(["belt", "leather belt"]))
    with pytest.raises(DataError, match="no 'caption' column"):
        entity_statistics(ingest_image_folder(root=root), entities=empty)
    mentions = entity_statistics(dataset, entities=empty).mentions["entities"].to_pylist()
    assert sum(entities == ["belt", "leather belt"] for entities in mentions) == 12
