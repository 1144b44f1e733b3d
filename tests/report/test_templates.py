"""User text reaches the report page and the dataset card inert: escaped HTML, intact tables."""

from __future__ import annotations

from pathlib import Path

import yaml

from rebalance.domain.artifacts import LabeledDataset, markdown_table, markdown_text
from rebalance.report.html import build_report

HOSTILE = '<script>alert("x")</script> | [link](http://e.x)'


def test_the_report_escapes_class_names_and_the_title() -> None:
    dataset = LabeledDataset.classification(["a.png", "b.png", "c.png"], [0, 0, 1], [HOSTILE, "plain"])
    page = build_report(f"title {HOSTILE}", dataset, dataset, {}).html
    assert "<script>" not in page
    assert (
        page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") == 3
    )  # <title>, <h1>, the count table
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_markdown_cells_cannot_break_the_table_or_open_html() -> None:
    import pyarrow as pa

    table = markdown_table(pa.table({"class": [HOSTILE, "a\nb"], "images": [1, 2]}))
    rows = table.splitlines()
    assert all(row.count(" | ") == 1 for row in rows if not row.startswith("|-"))  # two cells a row
    assert "<script>" not in table and "\\[link\\]" in table and "a b" in table
    assert markdown_text("ankle_boot") == "ankle_boot"


def test_the_card_header_is_valid_yaml_whatever_the_title(tmp_path: Path) -> None:
    from rebalance.steps.export import export_hf

    dataset = LabeledDataset.classification(["a.png", "b.png"], [0, 1], ["x", "y"])
    title = 'A "title": with --- and\nnewlines | pipes'
    card = export_hf(dataset, title=title, embed_images=False).card
    header = card.split("---\n")[1]
    assert yaml.safe_load(header)["pretty_name"] == title
    assert yaml.safe_load(header)["configs"][0]["data_files"][0] == {
        "split": "train",
        "path": "data/train-*.parquet",
    }
