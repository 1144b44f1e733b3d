from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rebalance.errors import DataError
from rebalance.io.coco import _rle_runs
from rebalance.steps.ingest import ingest_coco, ingest_image_folder
from tests.steps.lvis_fixture import build_lvis, mask_of


def test_lvis_json_keeps_category_metadata_and_derives_file_names(tmp_path: Path) -> None:
    annotations, image_root = build_lvis(tmp_path)
    dataset = ingest_coco(annotations=annotations, image_root=image_root)
    assert dataset.images["file_name"].to_pylist()[0] == "train2017/000000000001.png"
    assert dataset.image_ref("train2017/000000000001.png").path.is_file()
    assert dataset.images["neg_category_ids"].to_pylist()[0] == [3]
    categories = dataset.categories.to_pylist()
    assert categories[0]["synonyms"] == ["aerosol_can", "spray_can"]
    assert [c["frequency"] for c in categories] == ["c", "r", "f"]
    assert categories[2]["definition"].startswith("elongated")
    ordered = list(
        zip(
            dataset.annotations["image_id"].to_pylist(),
            dataset.annotations["annotation_id"].to_pylist(),
            strict=True,
        )
    )
    assert ordered == sorted(ordered) and len(ordered) == 10


def test_masks_are_kept_as_written_and_iscrowd_when_present(tmp_path: Path) -> None:
    annotations, image_root = build_lvis(tmp_path)
    payload = json.loads(annotations.read_text())
    payload["annotations"][0]["iscrowd"] = 1
    # Spacing and number forms of the file's own, which the stored mask keeps byte for byte.
    text = json.dumps(payload).replace('"segmentation": [[', '"segmentation":[ [', 1)
    annotations.write_text(text)
    dataset = ingest_coco(annotations=annotations, image_root=image_root)
    table = dataset.annotations.to_pylist()
    by_id = {row["annotation_id"]: row for row in table}
    for source in payload["annotations"]:
        stored = by_id[source["id"]]["segmentation"]
        assert json.loads(stored) == source["segmentation"] == mask_of(source["id"] - 100)
        assert f'"segmentation": {stored}' in text or f'"segmentation":{stored}' in text
    assert any(row["segmentation"].startswith("[ [") for row in table)
    assert {row["annotation_id"]: row["iscrowd"] for row in table if row["iscrowd"] is not None} == {
        payload["annotations"][0]["id"]: 1
    }


def test_null_masks_are_absent_and_an_rle_is_checked_against_the_known_size_only(tmp_path: Path) -> None:
    annotations, image_root = build_lvis(tmp_path)
    payload = json.loads(annotations.read_text())
    payload["annotations"][0]["segmentation"] = None  # box-only data from some converters
    payload["annotations"][1]["segmentation"] = {"size": [28, 27], "counts": [756]}
    image = next(i for i in payload["images"] if i["id"] == payload["annotations"][1]["image_id"])
    del image["width"]  # the image's width unknown: the RLE's size cannot be checked against it
    annotations.write_text(json.dumps(payload))
    masks = dict(
        zip(
            *(
                ingest_coco(annotations=annotations, image_root=image_root).annotations[c].to_pylist()
                for c in ("annotation_id", "segmentation")
            ),
            strict=True,
        )
    )
    assert masks[payload["annotations"][0]["id"]] is None
    assert json.loads(masks[payload["annotations"][1]["id"]])["size"] == [28, 27]


def test_compressed_rle_runs_equal_pycocotools() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for height, width, density in ((28, 28, 0.5), (64, 48, 0.02), (200, 300, 0.98), (5, 7, 0.0)):
        mask = np.asfortranarray(rng.random((height, width)) < density, dtype=np.uint8)
        # Large runs too: a dilated blob gives runs longer than one 5-bit chunk.
        mask[height // 4 : height // 2, : width // 2] = 1
        counts = mask_api.encode(mask)["counts"].decode()
        flat = mask.reshape(-1, order="F")
        changes = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
        expected = ([0] if flat[0] else []) + runs
        assert _rle_runs(counts) == expected


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON at line 2"):
        ingest_coco(annotations=path, image_root=tmp_path)


@pytest.mark.parametrize(
    "field, value, section", [("category_id", 999, "categories"), ("image_id", 42, "images")]
)
def test_unknown_ids_are_reported(tmp_path: Path, field: str, value: int, section: str) -> None:
    annotations, image_root = build_lvis(tmp_path)
    payload = json.loads(annotations.read_text())
    payload["annotations"][0][field] = value
    annotations.write_text(json.dumps(payload))
    with pytest.raises(
        DataError,
        match=rf"1 annotation\(s\) reference 1 {field}\(s\) missing from '{section}' \(first: \[{value}\]; "
        rf"annotation 109 has {field} {value}\)",
    ):
        ingest_coco(annotations=annotations, image_root=image_root)


@pytest.mark.parametrize(
    "section, index, key, value, expected",
    [
        (
            "annotations",
            0,
            "category_id",
            None,  # removed
            r"an entry of 'annotations' lacks \['id', 'image_id', 'category_id'\] \(Object missing required "
            r"field `category_id` at \$\.annotations\[0\], annotation id 109\): \{'id': 109, 'image_id': 6,",
        ),
        (
            "images",
            1,
            "id",
            "2",
            r"invalid value in 'images' \(at \$\.images\[1\]\.id, image id '2'\): Expected `int`, got `str`",
        ),
        (
            "annotations",
            3,
            "bbox",
            [1.0, "2"],
            r"invalid value in 'annotations' \(at \$\.annotations\[3\]\.bbox\[1\], annotation id 106\): "
            r"Expected `float`, got `str`",
        ),
        (
            "categories",
            2,
            "synonyms",
            "banana",
            r"invalid value in 'categories' \(at \$\.categories\[2\]\.synonyms, category id 57\): "
            r"Expected `array \| null`, got `str`",
        ),
        # Malformed masks of annotation 109 (the file's first), each named with its id.
        *(
            ("annotations", 0, "segmentation", mask, rf"annotation 109: {reason}")
            for mask, reason in (
                ([[1.0, 2.0, 3.0, 4.0, 5.0]], r"polygon 0 has an odd number of coordinates \(5\)"),
                (
                    {"size": [28, 27], "counts": [784]},
                    r"RLE size \[28, 27\] is not its image's \[height, width\] \(\[28, 28\]\)",
                ),
                ({"size": [28, 28], "counts": [780]}, r"the RLE counts do not cover .* \(780 pixels"),
                ({"size": [28, 28], "counts": "n08d00je"}, r"the RLE counts .* \(undecodable"),
                ("a mask", r"segmentation is neither polygons"),
            )
        ),
    ],
)
def test_missing_or_mistyped_fields_name_file_section_and_entry(
    tmp_path: Path, section: str, index: int, key: str, value: object, expected: str
) -> None:
    annotations, image_root = build_lvis(tmp_path)
    payload = json.loads(annotations.read_text())
    if value is None:
        del payload[section][index][key]
    else:
        payload[section][index][key] = value
    annotations.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=rf"lvis_v1_train\.json: {expected}"):
        ingest_coco(annotations=annotations, image_root=image_root)


def test_duplicate_ids_and_missing_sections(tmp_path: Path) -> None:
    annotations, image_root = build_lvis(tmp_path)
    payload = json.loads(annotations.read_text())
    payload["categories"].append(dict(payload["categories"][0]))
    annotations.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"duplicate id\(s\) \[1\] in 'categories'"):
        ingest_coco(annotations=annotations, image_root=image_root)
    annotations.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="missing or invalid section"):
        ingest_coco(annotations=annotations, image_root=image_root)


def test_image_folder_classes_subset_and_empty_class(tmp_path: Path) -> None:
    for name, count in (("b_cat", 3), ("a_dog", 2), ("c_empty", 0)):
        (tmp_path / name).mkdir()
        for index in range(count):
            (tmp_path / name / f"{index}.png").write_bytes(b"x")
    (tmp_path / "a_dog" / "notes.txt").write_text("not an image")
    dataset = ingest_image_folder(root=tmp_path, max_images_per_class=2)
    assert dataset.class_names() == ["a_dog", "b_cat", "c_empty"]
    assert dataset.images["file_name"].to_pylist() == [
        "a_dog/0.png",
        "a_dog/1.png",
        "b_cat/0.png",
        "b_cat/1.png",
    ]
    assert dataset.annotations["category_id"].to_pylist() == [0, 0, 1, 1]


def test_image_folder_without_classes_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        ingest_image_folder(root=tmp_path)


def test_coco_captions_attach_one_line_per_caption_and_unknown_images_are_errors(tmp_path: Path) -> None:
    annotations, root = build_lvis(tmp_path)
    ids = [image["id"] for image in json.loads(annotations.read_text())["images"]]
    captions = tmp_path / "captions_train2017.json"
    rows = [
        {"id": 1, "image_id": ids[0], "caption": "A pair of  trousers."},
        {"id": 2, "image_id": ids[0], "caption": "grey pants\non a hanger"},
        {"id": 3, "image_id": ids[2], "caption": "a banana"},
    ]
    captions.write_text(json.dumps({"annotations": rows}))
    dataset = ingest_coco(annotations=annotations, image_root=root, captions=captions)
    by_id = dict(
        zip(dataset.images["image_id"].to_pylist(), dataset.images["caption"].to_pylist(), strict=True)
    )
    assert by_id[ids[0]] == "A pair of trousers.\ngrey pants on a hanger" and by_id[ids[2]] == "a banana"
    assert by_id[ids[1]] is None
    captions.write_text(json.dumps({"annotations": [*rows, {"id": 9, "image_id": 424242, "caption": "x"}]}))
    with pytest.raises(DataError, match="caption annotation 9 is for image 424242, which the instances file"):
        ingest_coco(annotations=annotations, image_root=root, captions=captions)
