"""export_coco: COCO / LVIS JSON that lvis-api and pycocotools load, masks byte for byte, image-level
rows kept apart, repeat factors in the layout detectron2's and mmdet's samplers are fed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from rebalance.domain.artifacts import CocoExport, LabeledDataset
from rebalance.domain.classes import class_counts
from rebalance.steps.export_coco import export_coco
from rebalance.steps.ingest import ingest_coco
from rebalance.steps.sampling import repeat_factors_step
from tests.helpers import REPO, raw_masks
from tests.steps.lvis_fixture import build_lvis


def rebalanced_lvis(tmp_path: Path) -> tuple[LabeledDataset, Path]:
    """The LVIS fixture after IRFS, plus two retrieved pool images (image-level labels, one from a
    tar-free pool folder, one a PNG the steps generated) and one feature-space synthetic row."""
    annotations, image_root = build_lvis(tmp_path)
    dataset = repeat_factors_step(
        ingest_coco(annotations=annotations, image_root=image_root), method="irfs", threshold=0.5
    )
    pool = tmp_path / "pool"
    pool.mkdir()
    pool_png = sorted((REPO / "data/fashion_mnist_lt/train/dress").glob("*.png"))[0]
    (pool / "a.png").write_bytes(pool_png.read_bytes())
    generated = tmp_path / "generated.jpg"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(generated)
    dataset = dataset.add_images(
        {
            "file_name": pa.array([str(pool / "a.png"), str(generated), None]),
            "source": pa.array(["retrieved", "synthetic", "synthetic"]),
            "retrieval_score": pa.array([0.31, None, None]),
            "synthesis_seed": pa.array([None, 7, 8], pa.int64()),
            "repeat_factor": pa.array([1.0, 1.0, 1.0]),
        },
        np.array([3, 3, 1]),
    )
    return dataset, annotations


def test_lvis_export_loads_in_lvis_api_and_pycocotools_with_masks_byte_for_byte(tmp_path: Path) -> None:
    lvis_api = pytest.importorskip("lvis")
    coco_api = pytest.importorskip("pycocotools.coco")
    dataset, source = rebalanced_lvis(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    export_coco(dataset, format="lvis").write(out)

    lvis = lvis_api.LVIS(str(out / "instances.json"))
    coco = coco_api.COCO(str(out / "instances.json"))
    assert sorted(lvis.imgs) == sorted(coco.imgs) == [1, 2, 3, 4, 5, 6]
    assert len(lvis.anns) == len(coco.anns) == 10

    # Untouched annotations' masks are the input file's bytes.
    assert raw_masks(out / "instances.json") == raw_masks(source)
    by_id = {a["id"]: a for a in json.loads(source.read_text())["annotations"]}
    assert all(a["segmentation"] == by_id[a["id"]]["segmentation"] for a in lvis.anns.values())

    # Image-level rows: their own file, the class in pos_category_ids, bytes copied, no box invented.
    labels = json.loads((out / "image_labels.json").read_text())
    assert labels["annotations"] == []
    entries = {image["rebalance"]["source"]: image for image in labels["images"]}
    assert entries["retrieved"]["pos_category_ids"] == [3]
    assert entries["retrieved"]["rebalance"]["retrieval_score"] == 0.31
    assert entries["synthetic"]["rebalance"]["synthesis_seed"] == 7
    assert entries["synthetic"]["file_name"] == "images/000000000008.jpg"
    with Image.open(out / entries["synthetic"]["file_name"]) as image:
        assert image.size == (entries["synthetic"]["width"], entries["synthetic"]["height"]) == (32, 24)
    assert (out / entries["retrieved"]["file_name"]).read_bytes() == (tmp_path / "pool/a.png").read_bytes()
    lvis_api.LVIS(str(out / "image_labels.json"))

    # Per-category counts of the two files equal the pipeline's ledger (less the row with no image).
    summary = json.loads((out / "export.json").read_text())
    assert summary["rows_without_image"] == [9]
    with_image = dataset.drop(dataset.images["image_id"].to_numpy() == 9, "test", ["no image"])
    images, instances = class_counts(with_image)
    from_files = {c: 0 for c in lvis.cats}
    for image_ids in (lvis.cat_img_map, {}):
        for category, ids in image_ids.items():
            from_files[category] += len(set(ids))
    for image in labels["images"]:
        for category in image["pos_category_ids"]:
            from_files[category] += 1
    category_ids = dataset.categories["category_id"].to_pylist()
    assert [from_files[c] for c in category_ids] == images.tolist()
    assert [summary["per_category"][name]["images"] for name in dataset.class_names()] == images.tolist()
    # LVIS's image_count: images with a box for the class, as the file's own annotations count them.
    assert [lvis.cats[c]["image_count"] for c in category_ids] == [
        len(set(lvis.cat_img_map.get(c, []))) for c in category_ids
    ]
    assert [lvis.cats[c]["image_count"] for c in category_ids] == [
        summary["per_category"][n]["box_images"] for n in dataset.class_names()
    ]
    assert sum(instances) - 2 == len(lvis.anns)  # the two retrieved/synthetic labels have no box


def test_repeat_factors_and_image_entries_follow_the_trainers_documented_formats(tmp_path: Path) -> None:
    """What detectron2's load_lvis_json and RepeatFactorTrainingSampler, and mmdet's LVISV1Dataset
    with a ClassBalancedDataset, read, checked without those packages."""
    dataset, _ = rebalanced_lvis(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    export_coco(dataset).write(out)
    instances = json.loads((out / "instances.json").read_text())
    labels = json.loads((out / "image_labels.json").read_text())
    factors = json.loads((out / "repeat_factors.json").read_text())

    # detectron2 lists images by sorted id; our factors come in that order, one per image of both files.
    listed = sorted(image["id"] for image in instances["images"] + labels["images"])
    assert factors["image_ids"] == listed
    expected = dict(
        zip(dataset.images["image_id"].to_pylist(), dataset.images["repeat_factor"].to_pylist(), strict=True)
    )
    assert factors["repeat_factors"] == [expected[i] for i in listed]
    assert all(f >= 1.0 for f in factors["repeat_factors"]) and max(factors["repeat_factors"]) > 1.0
    for image in instances["images"]:
        assert image["repeat_factor"] == expected[image["id"]]
        # load_lvis_json: image_root + the last two parts of coco_url; both federated lists present.
        split_folder, name = image["coco_url"].split("/")[-2:]
        assert (tmp_path / "coco" / split_folder / name).is_file()
        assert isinstance(image["neg_category_ids"], list) and isinstance(
            image["not_exhaustive_category_ids"], list
        )
    ids = [annotation["id"] for annotation in instances["annotations"]]
    assert len(set(ids)) == len(ids)
    for annotation in instances["annotations"]:
        assert len(annotation["bbox"]) == 4 and annotation["area"] > 0
        mask = annotation["segmentation"]
        assert isinstance(mask, dict) or all(len(p) % 2 == 0 and len(p) >= 6 for p in mask)
    for category in instances["categories"]:
        assert category["frequency"] in {"r", "c", "f"} and category["synonyms"]


def test_coco_format_has_iscrowd_and_no_lvis_fields(tmp_path: Path) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    dataset, _ = rebalanced_lvis(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    export = export_coco(dataset, format="coco", copy_images=False)
    export.write(out)
    coco = coco_api.COCO(str(out / "instances.json"))
    assert {a["iscrowd"] for a in coco.anns.values()} == {0}
    assert "frequency" not in coco.cats[1] and "neg_category_ids" not in coco.imgs[1]
    labels = json.loads((out / "image_labels.json").read_text())
    assert not (out / "images").exists()
    assert str(tmp_path / "pool/a.png") in [image["file_name"] for image in labels["images"]]
    assert CocoExport.read(out).num_rows == 8


def test_negatives_stay_sizes_are_filled_and_lvis_loader_limits_are_noted(tmp_path: Path) -> None:
    """An image without any label stays in instances.json (a negative, as in the input); a missing
    size is read from the file, after EXIF rotation; what detectron2's LVIS loader rejects (the
    fixture's RLE masks, an image without coco_url) is listed in export.json."""
    dataset, _ = rebalanced_lvis(tmp_path)
    rotated = tmp_path / "coco" / "train2017" / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: detectron2 loads it 24 wide, 32 high
    Image.new("RGB", (32, 24)).save(rotated, exif=exif)
    negative = dataset.add_images(
        {"file_name": pa.array(["train2017/rotated.jpg"]), "source": pa.array(["original"])}, np.array([1])
    )
    last = negative.images["image_id"].to_numpy()[-1]
    negative = dataclasses.replace(
        negative,
        annotations=negative.annotations.filter(pc.not_equal(negative.annotations["image_id"], last)),
    )
    out = tmp_path / "export"
    out.mkdir()
    export_coco(negative).write(out)
    entries = {image["id"]: image for image in json.loads((out / "instances.json").read_text())["images"]}
    assert (entries[last]["width"], entries[last]["height"]) == (24, 32)
    notes = json.loads((out / "export.json").read_text())["notes"]
    assert any("with an RLE mask" in note for note in notes)
    assert any(f"without coco_url (first ids: [{last}])" in note for note in notes)
    assert "format: coco" in notes[-1]
