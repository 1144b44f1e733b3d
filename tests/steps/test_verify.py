from __future__ import annotations

from pathlib import Path

import pytest

from rebalance.errors import DataError
from rebalance.steps.ingest import ingest_image_folder
from rebalance.steps.verify import verify_images
from tests.helpers import REPO


def make_folder(tmp_path: Path) -> Path:
    good = sorted((REPO / "data/fashion_mnist_lt/train/bag").glob("*.png"))[:3]
    (tmp_path / "bag").mkdir()
    for png in good:
        (tmp_path / "bag" / png.name).write_bytes(png.read_bytes())
    (tmp_path / "bag" / "zz_truncated.png").write_bytes(good[0].read_bytes()[:60])
    (tmp_path / "bag" / "zz_text.png").write_text("not an image")
    return tmp_path


def test_corrupt_images_are_dropped_and_recorded(tmp_path: Path) -> None:
    dataset = ingest_image_folder(root=make_folder(tmp_path))
    verified = verify_images(dataset)
    assert verified.num_rows == 3 and verified.annotations.num_rows == 3
    assert verified.images["width"].to_pylist() == [28, 28, 28]
    removed = verified.removed.to_pylist()
    assert [r["file_name"] for r in removed] == ["bag/zz_text.png", "bag/zz_truncated.png"]
    assert all(r["step"] == "verify_images" and r["reason"] for r in removed)


def test_fail_mode_names_the_files(tmp_path: Path) -> None:
    dataset = ingest_image_folder(root=make_folder(tmp_path))
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*zz_text.png"):
        verify_images(dataset, on_error="fail")


def test_sharded_result_equals_whole(tmp_path: Path) -> None:
    dataset = ingest_image_folder(root=make_folder(tmp_path))
    whole = verify_images(dataset)
    parts = [verify_images(dataset.shard(i, 3)) for i in range(3)]
    joined = type(whole).concat(parts)
    for table in ("images", "annotations", "removed", "categories"):
        assert getattr(joined, table).equals(getattr(whole, table))
