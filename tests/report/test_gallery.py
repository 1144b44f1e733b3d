"""The report's gallery: per class, retrieved / synthetic / removed rows and test errors, the doubtful first."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rebalance.domain.artifacts import LabeledDataset, TrainReport
from rebalance.report.gallery import build_gallery, gallery_files
from rebalance.report.html import build_report
from rebalance.steps.ingest import ingest_image_folder

DEMO = Path(__file__).resolve().parents[2] / "data" / "fashion_mnist_lt"


def _pool_file(name: str) -> str:
    return str(next((DEMO / "pool").rglob(name)))


def gallery_fixture(tmp_path: Path) -> tuple[LabeledDataset, LabeledDataset, LabeledDataset, dict]:
    """Real demo images: 4 a class for training, then 3 retrieved rows (scores 0.9, 0.2, 0.5, the
    0.2 one carrying another class's pool label) and 2 SMOTE rows for class 0, and a removal of a
    class-1 image as a near-duplicate of another; 2 test images a class and the runs' predictions."""
    original = ingest_image_folder(root=DEMO / "train", max_images_per_class=4)
    pool = sorted((DEMO / "pool").rglob("*.png"))[:3]
    names = original.class_names()
    category_ids = original.categories["category_id"].to_numpy()
    retrieved = original.add_images(
        {
            "file_name": pa.array([str(path) for path in pool]),
            "source": pa.array(["retrieved"] * 3),
            "retrieval_score": pa.array([0.9, 0.2, 0.5]),
            "retrieval_query": pa.array([f"image examples of {names[0]}"] * 3),
            "reference_label": pa.array([names[0], names[1], names[0]]),
        },
        np.full(3, category_ids[0]),
    )
    synthetic = retrieved.add_images(
        {
            "file_name": pa.array([None, None], pa.string()),
            "source": pa.array(["synthetic"] * 2),
            "synthesis_method": pa.array(["smote"] * 2),
            "synthesis_parent": pa.array([0, 1], pa.int64()),
            "synthesis_neighbor": pa.array([1, 2], pa.int64()),
            "synthesis_seed": pa.array([7, 7], pa.int64()),
        },
        np.full(2, category_ids[0]),
    )
    class_one = np.flatnonzero(synthetic.single_labels("test") == 1)
    drop = np.zeros(synthetic.num_rows, dtype=bool)
    drop[class_one[0]] = True
    kept_id = int(synthetic.images["image_id"].to_numpy()[class_one[1]])
    final = synthetic.drop(drop, "semdedup", [f"near-duplicate of image {kept_id}"], kept=[kept_id])
    test = ingest_image_folder(root=DEMO / "test", split="test", max_images_per_class=2)
    truth = test.single_labels("test")
    rebalanced = (truth + 1) % len(names)  # every prediction wrong
    baseline = truth.copy()  # every prediction right

    def run(predictions: np.ndarray) -> TrainReport:
        accuracy = float((predictions == truth).mean())
        return TrainReport(
            {
                "test_predictions": predictions.tolist(),
                "bucket_accuracy": {"rare": accuracy, "common": None, "frequent": None},
                "top1": accuracy,
                "mean_class_accuracy": accuracy,
                "config": {"loss": "ce", "sampler": "uniform", "epochs": 1, "device": "cpu"},
                "encoder": "pixels",
                "train_samples": final.num_rows,
                "warnings": [],
            }
        )

    runs = {"baseline": run(baseline), "rebalanced": run(rebalanced)}
    return original, final, test, runs


def test_each_class_shows_its_rows_least_confident_first_with_why_they_are_there(tmp_path: Path) -> None:
    original, final, test, runs = gallery_fixture(tmp_path)
    names = original.class_names()
    gallery = build_gallery(original, final, runs, test, cap=24, classes_per_page=100, thresholds=(10, 100))
    by_name = {cls.name: {section.kind: section for section in cls.sections} for cls in gallery.classes}

    retrieved = by_name[names[0]]["retrieved"]
    assert retrieved.total == 3
    assert [tile.lines[0] for tile in retrieved.tiles] == ["score 0.200", "score 0.500", "score 0.900"]
    assert retrieved.tiles[0].warning == f"pool label: {names[1]}"  # another class's label is marked
    assert retrieved.tiles[1].warning is None and retrieved.tiles[0].lines[1].startswith(
        "query: image examples"
    )

    synthetic = by_name[names[0]]["synthetic"]
    assert synthetic.total == 2 and all(tile.thumbnail is None for tile in synthetic.tiles)  # no pixels
    assert synthetic.tiles[0].lines == ("smote", "parent image 0", "neighbour image 1", "seed 7")

    removed = by_name[names[1]]["removed"]
    assert removed.total == 1 and removed.tiles[0].lines[0] == "semdedup"
    assert removed.tiles[0].beside is not None and removed.tiles[0].beside.lines[0].startswith("kept image ")
    assert removed.tiles[0].thumbnail and removed.tiles[0].beside.thumbnail

    # Every class is rare here (4 images): each test image is a rare-class error the baseline got right.
    errors = by_name[names[2]]["test errors"]
    assert errors.total == 2 and errors.tiles[0].lines == (f"rebalanced: {names[3]}", f"baseline: {names[2]}")
    assert errors.tiles[0].warning == "the baseline got it right"
    # One PNG per distinct image: 3 pool + 2 (removed and kept) + 20 test images.
    assert len(gallery.thumbnails) == 25 and all(
        data[:3] == b"\xff\xd8\xff" for data in gallery.thumbnails.values()
    )


def test_the_cap_keeps_the_page_light_and_the_counts_say_how_many_there_were(tmp_path: Path) -> None:
    original, final, test, runs = gallery_fixture(tmp_path)
    gallery = build_gallery(original, final, runs, test, cap=1, classes_per_page=100)
    first = gallery.classes[0]
    assert all(len(section.tiles) == 1 for cls in gallery.classes for section in cls.sections)
    assert gallery.figures()["found"] == {"retrieved": 3, "synthetic": 2, "removed": 1, "test errors": 20}
    assert gallery.figures()["shown"]["test errors"] == 10 and first.name


def test_classes_come_in_order_of_need_rare_first_then_the_least_precise() -> None:
    import dataclasses

    from rebalance.report.gallery import _order_of_need

    original = ingest_image_folder(root=DEMO / "train", max_images_per_class=4)
    labels = original.single_labels("test")
    drop = np.zeros(original.num_rows, dtype=bool)
    drop[np.flatnonzero(labels == 3)[:2]] = True  # class 3 keeps 2 images
    drop[np.flatnonzero(labels == 5)[:1]] = True  # class 5 keeps 3
    original = original.drop(drop, "test", ["thinned for the test"] * int(drop.sum()))
    low = [None] * 10
    low[7], low[8] = 0.6, 0.2  # class 8's retrieval is the least precise
    final = dataclasses.replace(
        original, categories=original.categories.append_column("precision_low", pa.array(low, pa.float64()))
    )
    buckets = ["rare" if count <= 3 else "common" for count in [4, 4, 4, 2, 4, 3, 4, 4, 4, 4]]
    assert _order_of_need(original, final, buckets) == [3, 5, 8, 7, 0, 1, 2, 4, 6, 9]


def test_classes_beyond_the_first_page_have_pages_linked_from_an_index(tmp_path: Path) -> None:
    original, final, test, runs = gallery_fixture(tmp_path)
    gallery = build_gallery(original, final, runs, test, cap=24, classes_per_page=3, thresholds=(10, 100))
    assert len(gallery.first_page) == 3 and list(gallery.pages) == [
        "page-2.html",
        "page-3.html",
        "page-4.html",
    ]
    assert gallery.class_count == 10 and gallery.more
    files = gallery_files(gallery, "demo")
    index = files["gallery/index.html"].decode()
    for cls in gallery.classes:
        page = gallery.page_of(cls.anchor)
        assert f'href="{page or "../report.html"}#{cls.anchor}"' in index
        if page:
            assert f'id="{cls.anchor}"' in files[f"gallery/{page}"].decode()


def test_the_report_writes_its_gallery_and_reads_it_back(tmp_path: Path) -> None:
    from rebalance.domain.artifacts import Report

    original, final, test, runs = gallery_fixture(tmp_path)
    report = build_report(
        "demo", original, final, runs, None, (10, 100), test=test, gallery_classes_per_page=4
    )
    assert 'id="gallery"' in report.html and report.figures["gallery"]["class_count"] == 10
    (tmp_path / "report").mkdir()
    report.write(tmp_path / "report")
    assert (tmp_path / "report" / "gallery" / "index.html").is_file()
    assert Report.read(tmp_path / "report").files == report.files
    off = build_report("demo", original, final, runs, None, (10, 100), test=test, gallery_cap=0)
    assert 'id="gallery"' not in off.html and not off.files


def _chromium() -> str | None:
    import os

    return (
        os.environ.get("REBALANCE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_the_report_loads_every_image_without_console_errors_and_fits_a_phone(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    original, final, test, runs = gallery_fixture(tmp_path)
    report = build_report(
        "demo", original, final, runs, None, (10, 100), test=test, gallery_classes_per_page=4
    )
    (tmp_path / "report").mkdir()
    report.write(tmp_path / "report")
    pages = ["report.html", "gallery/page-2.html", "gallery/index.html"]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            for width in (1200, 375):  # a desktop, then a phone
                page = browser.new_page(viewport={"width": width, "height": 800})
                errors: list[str] = []
                page.on(
                    "console",
                    lambda message, seen=errors: (
                        seen.append(message.text) if message.type == "error" else None
                    ),
                )
                page.on("pageerror", lambda error, seen=errors: seen.append(str(error)))
                for name in pages:
                    page.goto((tmp_path / "report" / name).as_uri(), wait_until="load")
                    widths = page.eval_on_selector_all(
                        "img", "images => images.map(i => i.complete ? i.naturalWidth : 0)"
                    )
                    assert name == "gallery/index.html" or widths, name
                    assert all(w > 0 for w in widths), (name, widths)
                    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    assert overflow <= 0, (name, width, overflow)
                    if width == 375 and name == "report.html":
                        page.screenshot(path=str(tmp_path / "phone.png"), full_page=False)
                assert errors == [], errors
                page.close()
        finally:
            browser.close()


def test_the_panel_page_shows_a_reports_gallery_from_its_figures(tmp_path: Path) -> None:
    import json

    from rebalance.report.panel import panel_html

    original, final, test, runs = gallery_fixture(tmp_path)
    report = build_report(
        "demo", original, final, runs, None, (10, 100), test=test, gallery_classes_per_page=4
    )
    figures = json.loads(json.dumps(report.figures))  # as compare reads it back from report.json
    result = {"seeds": [0], "data": {}, "models": {}, "ablation": []}
    page = panel_html(
        result, "panel", gallery=figures["gallery"], gallery_prefix="report/", gallery_run="pipeline + CE"
    )
    shown = [
        f'src="report/{tile["thumbnail"]}"'
        for cls in figures["gallery"]["first_page"]
        for s in cls["sections"]
        for tile in s["tiles"]
        if tile["thumbnail"]
    ]
    assert shown and all(source in page for source in shown)
    assert 'href="report/gallery/index.html"' in page and "pipeline + CE" in page
