from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rebalance.errors import DataError
from rebalance.methods.sampling import repeat_factors
from rebalance.steps.ingest import ingest_coco, ingest_image_folder
from rebalance.steps.sampling import epoch_index, repeat_factors_step
from tests.helpers import REPO
from tests.steps.lvis_fixture import build_lvis

DEMO_TRAIN = REPO / "data" / "fashion_mnist_lt" / "train"


def test_rfs_on_lvis_fixture_uses_every_instance(tmp_path: Path) -> None:
    annotations, root = build_lvis(tmp_path)
    dataset = ingest_coco(annotations=annotations, image_root=root)
    lists = dataset.category_lists()
    # Dense positions: aerosol_can 0, alcohol 1, banana 2. Images 1-2: [0, 2, 2], images 3-6: [2].
    assert [sorted(x) for x in lists.to_pylist()] == [[0, 2, 2]] * 2 + [[2]] * 4
    out = repeat_factors_step(dataset, method="rfs", threshold=0.5)
    # aerosol_can is in 2 of 6 images: r = sqrt(0.5 / (1/3)) = 1.2247; banana in all: r = 1.
    np.testing.assert_allclose(out.images["repeat_factor"].to_numpy(), [np.sqrt(1.5)] * 2 + [1.0] * 4)
    assert out.annotations.equals(dataset.annotations) and out.num_rows == dataset.num_rows
    irfs = repeat_factors_step(dataset, method="irfs", threshold=0.5).images["repeat_factor"].to_numpy()
    np.testing.assert_allclose(irfs, repeat_factors(lists, threshold=0.5, method="irfs"))


def test_class_balanced_on_long_tailed_folder_equalises_expected_counts() -> None:
    dataset = ingest_image_folder(root=DEMO_TRAIN, max_images_per_class=50)
    out = repeat_factors_step(dataset, method="class_balanced")
    labels = out.annotations["category_id"].to_numpy()
    expected = np.bincount(labels, weights=out.images["repeat_factor"].to_numpy())
    np.testing.assert_allclose(expected, dataset.num_rows / 10)
    again = repeat_factors_step(out, method="sqrt")
    assert again.images.column_names.count("repeat_factor") == 1


def test_class_balanced_rejects_multi_label_images(tmp_path: Path) -> None:
    annotations, root = build_lvis(tmp_path)
    with pytest.raises(DataError, match="exactly one label per image"):
        repeat_factors_step(ingest_coco(annotations=annotations, image_root=root), method="class_balanced")


def test_epoch_index_is_seeded_and_follows_factors() -> None:
    dataset = repeat_factors_step(
        ingest_image_folder(root=DEMO_TRAIN, max_images_per_class=20), method="rfs", threshold=0.5
    )
    ceil = epoch_index(dataset, epochs=2, rounding="ceil", shuffle=False).table
    factors = dataset.images["repeat_factor"].to_numpy()
    assert ceil.num_rows == 2 * int(np.ceil(factors).sum())
    assert (
        ceil.filter(ceil["epoch"].to_numpy() == 0)["image_id"].to_pylist()
        == np.repeat(dataset.images["image_id"].to_numpy(), np.ceil(factors).astype(int)).tolist()
    )
    first = epoch_index(dataset, epochs=3, seed=5).table
    assert first.equals(epoch_index(dataset, epochs=3, seed=5).table)
    assert not first.equals(epoch_index(dataset, epochs=3, seed=6).table)
    with pytest.raises(DataError, match="add a repeat_factors step"):
        epoch_index(ingest_image_folder(root=DEMO_TRAIN, max_images_per_class=2))
