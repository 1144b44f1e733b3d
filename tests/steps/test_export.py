from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from rebalance.domain.artifacts import HFDatasetExport
from rebalance.steps.export import export_hf
from rebalance.steps.ingest import ingest_coco, ingest_image_folder
from rebalance.steps.verify import verify_images
from tests.helpers import REPO
from tests.steps.lvis_fixture import build_lvis, mask_of

DEMO = REPO / "data" / "fashion_mnist_lt"


def test_classification_export_loads_without_rebalance(tmp_path: Path) -> None:
    train = ingest_image_folder(root=DEMO / "train", max_images_per_class=3)
    test = ingest_image_folder(root=DEMO / "test", split="test", max_images_per_class=2)
    verified = verify_images(train)
    export = export_hf(verified, original=train, test=test, num_shards=2)
    (tmp_path / "export").mkdir()
    export.write(tmp_path / "export")

    from_disk = datasets.load_from_disk(str(tmp_path / "export"))
    assert from_disk["train"].num_rows == 30 and from_disk["test"].num_rows == 20
    assert from_disk["train"].features["label"].names == train.class_names()
    first = from_disk["train"][0]
    assert first["image"].size == (28, 28) and first["source"] == "original"
    assert first["label"] == 0 and first["file_name"].startswith("ankle_boot/")

    from_card = datasets.load_dataset(str(tmp_path / "export"))
    from_parquet = datasets.load_dataset(
        "parquet", data_files={"train": str(tmp_path / "export/data/train-*.parquet")}
    )
    for loaded in (from_card["train"], from_parquet["train"]):
        assert loaded["label"] == from_disk["train"]["label"]
        assert loaded.features["label"].names == train.class_names()
    assert len(list((tmp_path / "export/data").glob("train-*-of-00002.parquet"))) == 2

    card = (tmp_path / "export" / "README.md").read_text()
    assert "| class | bucket | before | after | change | test |" in card
    assert "| t-shirt_top | rare | 3 | 3 | 0 | 2 |" in card
    assert HFDatasetExport.read(tmp_path / "export").num_rows == 50


def test_detection_export_groups_objects(tmp_path: Path) -> None:
    annotations, root = build_lvis(tmp_path)
    dataset = ingest_coco(annotations=annotations, image_root=root)
    export = export_hf(dataset, embed_images=False)
    train = export.dataset["train"]
    assert train.features["objects"].feature["category"].names == ["aerosol_can", "alcohol", "banana"]
    first = train[0]
    assert sorted(o["category"] for o in first["objects"]) == [0, 2, 2]
    assert first["objects"][0]["bbox"] == [1.0, 2.0, 10.0, 12.0]
    # Masks: COCO JSON text, what the annotations file held (polygons and both RLE forms).
    exported = {o["id"]: json.loads(o["segmentation"]) for row in train for o in row["objects"]}
    assert exported == {i: mask_of(i - 100) for i in range(100, 110)}
    assert "iscrowd" not in train.features["objects"].feature  # LVIS has no crowd flag
    # A test split without masks still gets the same `objects` layout, its masks null.
    payload = json.loads(annotations.read_text())
    for annotation in payload["annotations"]:
        del annotation["segmentation"]
    (tmp_path / "boxes_only.json").write_text(json.dumps(payload))
    test = ingest_coco(annotations=tmp_path / "boxes_only.json", image_root=root, split="test")
    both = export_hf(dataset, test=test, embed_images=False).dataset
    assert both["test"].features == both["train"].features
    assert {o["segmentation"] for row in both["test"] for o in row["objects"]} == {None}
    assert Path(train.cast_column("image", datasets.Image(decode=False))[0]["image"]["path"]).is_file()
    assert first["neg_category_ids"] == [3]


def test_card_shows_expected_draws_per_epoch_after_sampling(tmp_path: Path) -> None:
    from rebalance.steps.sampling import repeat_factors_step

    train = ingest_image_folder(root=DEMO / "train", max_images_per_class=40)
    sampled = repeat_factors_step(train, method="class_balanced")
    export = export_hf(sampled, original=train)
    assert "| class | bucket | before | after | change | per epoch |" in export.card
    # 40 images per class but ankle_boot (10), bag (17), sneaker (28): 335 images, 33.5 per class.
    assert "| ankle_boot | rare | 10 | 10 | 0 | 33.5 |" in export.card
    assert export.dataset["train"]["repeat_factor"][0] == pytest.approx(33.5 / 10)
