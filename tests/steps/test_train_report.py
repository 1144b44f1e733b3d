from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rebalance import api
from rebalance.core.runner import RunResult
from tests.helpers import TINY


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.cells.append(data.strip())


def test_tiny_run_trains_both_heads_and_renders_the_report(tiny_run: RunResult) -> None:
    report_dir = tiny_run.output_dir / "report"
    parser = _Images()
    parser.feed((report_dir / "report.html").read_text())
    assert [source for source in parser.sources if not source.startswith("gallery/")] == [
        "plots/class_distribution.png",
        "plots/stage_changes.png",
        "plots/concept_frequency.png",
        "plots/bucket_accuracy.png",
    ]
    # The gallery: every thumbnail the page shows is a file of the report, retrieval's rows among them.
    thumbnails = [source for source in parser.sources if source.startswith("gallery/img/")]
    assert thumbnails and all((report_dir / source).is_file() for source in thumbnails)
    gallery = json.loads((report_dir / "report.json").read_text())["gallery"]
    assert gallery["found"]["retrieved"] == figures_changes(report_dir)["+retrieved"] > 0
    for source in parser.sources:
        png = (report_dir / source).read_bytes()
        assert (
            png.startswith(b"\xff\xd8\xff")
            if source in thumbnails
            else png.startswith(b"\x89PNG") and len(png) > 1000
        )
    assert {"baseline", "rebalanced", "Δ rebalanced", "Δ cnn_rebalanced", "rare", "common"} <= set(
        parser.cells
    )
    figures = json.loads((report_dir / "report.json").read_text())
    assert set(figures["accuracy"]) == {"baseline", "rebalanced", "cnn_baseline", "cnn_rebalanced"}
    assert set(figures["accuracy"]["baseline"]) == {
        "rare",
        "common",
        "frequent",
        "top1",
        "mean_class_accuracy",
    }
    # Ten classes, five test images each: chance is 0.1. The probe on 64 PCA axes and the CNN
    # trained for five epochs on ~200 images both do far better.
    assert figures["accuracy"]["baseline"]["top1"] >= 0.4 and figures["accuracy"]["rebalanced"]["top1"] >= 0.4
    assert (
        figures["accuracy"]["cnn_baseline"]["top1"] >= 0.2
        and figures["accuracy"]["cnn_rebalanced"]["top1"] >= 0.2
    )
    # On a balanced test set top-1 is the mean of the per-class accuracies.
    for run in figures["accuracy"].values():
        assert run["top1"] == pytest.approx(run["mean_class_accuracy"])
    assert {"original", "final", "expected per epoch"} <= set(figures["stages"])
    card = (tiny_run.output_dir / "export" / "README.md").read_text()
    assert "![class counts before and after](plots/class_counts.png)" in card
    assert (tiny_run.output_dir / "export" / "plots" / "class_counts.png").stat().st_size > 1000
    assert "## Pipeline" in card and "step: semdedup" in card and "epsilon: 0.03" in card
    # Retrieval's per-class ledger: the same rows in the card, the report page and report.json.
    by_class = figures["retrieval_by_class"]
    assert by_class and {row["class"] for row in by_class} <= set(figures["classes"])
    for row in by_class:
        assert row["kept"] <= row["candidates"] <= row["quota"]
        assert (row["shortfall"] is None) == (row["kept"] == row["quota"])
        assert row["estimate"] is None or row["low"] <= row["estimate"] <= row["high"]
        line = next(
            line for line in card.splitlines() if line.startswith(f"| {row['class']} | {row['quota']} |")
        )
        assert f"| {row['candidates']} | {row['kept']} |" in line
    assert (
        "Retrieval precision per class" in parser.cells
        and "estimated precision (90% interval)" in parser.cells
    )


PLAIN_TRAINING = """
import sys, datasets, numpy as np, torch
assert "rebalance" not in sys.modules
folder = sys.argv[1]
from_disk = datasets.load_from_disk(folder)
from_parquet = datasets.load_dataset("parquet", data_files={"train": folder + "/data/train-*.parquet"})["train"]
assert from_parquet.num_rows == from_disk["train"].num_rows
from_parquet = from_parquet.filter(lambda row: row["image"] is not None)  # feature-only synthetic rows have none
names = from_parquet.features["label"].names
def collate(rows):
    pixels = np.stack([np.asarray(r["image"], dtype=np.float32).reshape(-1) / 255 for r in rows])
    return torch.from_numpy(pixels), torch.tensor([r["label"] for r in rows])
loader = torch.utils.data.DataLoader(from_parquet, batch_size=32, shuffle=True, collate_fn=collate)
model = torch.nn.Linear(28 * 28, len(names))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for images, labels in loader:
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print(len(names), from_parquet.num_rows, "repeat_factor" in from_parquet.column_names, len(from_parquet[0]["embedding"]))
"""


def test_export_trains_with_plain_pytorch_without_rebalance(tiny_run: RunResult, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRAINING, str(tiny_run.output_dir / "export")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sampled_rows = next(step["rows_out"] for step in tiny_run.manifest["steps"] if step["id"] == "sampled")
    assert result.stdout.split() == ["10", str(sampled_rows), "True", "64"]


def test_one_bucket_definition_reaches_training_export_and_report(
    run_dirs: list[str], tmp_path: Path
) -> None:
    # With common ≤ 15 images, tiny's bag (17 images) and every 20-image class are frequent.
    api.run(TINY, [*run_dirs, "buckets.common_max_images=15"])
    expected = ["rare"] + ["frequent"] * 9
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["buckets"] == expected
    exported = json.loads((tmp_path / "out" / "export" / "export.json").read_text())["class_buckets"]
    assert list(exported.values()) == expected
    for run in report["accuracy"].values():
        assert run["common"] is None and run["rare"] is not None and run["frequent"] is not None
    card = (tmp_path / "out" / "export" / "README.md").read_text()
    assert "rare ≤ 10 < common ≤ 15 < frequent" in card


def test_class_prior_original_corrects_for_the_counts_before_rebalancing() -> None:
    import numpy as np

    from rebalance.domain.artifacts import Embeddings, LabeledDataset
    from rebalance.errors import DataError
    from rebalance.steps.train import train_probe

    def split(counts: list[int]) -> tuple[LabeledDataset, Embeddings]:
        labels = np.repeat(np.arange(len(counts)), counts)
        rng = np.random.default_rng(sum(counts))
        vectors = (np.eye(4, dtype=np.float32)[labels] + rng.normal(0, 0.8, (len(labels), 4))).astype(
            np.float32
        )
        names = [f"{i}.png" for i in range(len(labels))]
        dataset = LabeledDataset.classification(names, labels.tolist(), ["a", "b", "c", "d"])
        return dataset, Embeddings(np.arange(len(labels)), vectors, "test-encoder")

    original, original_embeddings = split([60, 20, 6, 2])
    rebalanced, embeddings = split([60, 20, 20, 20])
    test, test_embeddings = split([25, 25, 25, 25])

    def probe(dataset, vectors, **options):
        report = train_probe(
            dataset, vectors, test, test_embeddings, loss="logit_adjustment", epochs=60, lr=0.05, **options
        )
        return report.metrics

    with pytest.raises(DataError, match="class_prior: original needs the step's 'original' input"):
        probe(rebalanced, embeddings, class_prior="original")
    # On the original data the two priors are the same counts: the same probe.
    assert probe(original, original_embeddings, original=original) == {
        **probe(original, original_embeddings, original=original, class_prior="original"),
        "config": probe(original, original_embeddings, original=original)["config"],
    }
    by_rows = probe(rebalanced, embeddings, original=original)
    by_original = probe(rebalanced, embeddings, original=original, class_prior="original")
    assert by_original["config"]["class_prior"] == "original"

    def recall_of_d(metrics):
        return next(row["accuracy"] for row in metrics["per_class"] if row["class"] == "d")

    # The original counts call d ten times rarer than the rebalanced rows do: the probe leans towards it.
    assert recall_of_d(by_original) > recall_of_d(by_rows) + 0.2


def figures_changes(report_dir: Path) -> dict[str, int]:
    return json.loads((report_dir / "report.json").read_text())["changes"]
