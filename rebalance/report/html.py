"""Assemble the run report: stage-by-stage class counts, removals, and baseline vs rebalanced accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rebalance.domain.artifacts import ConceptFrequency, LabeledDataset, Report, TrainReport
from rebalance.domain.classes import BUCKETS, class_buckets, class_counts, expected_draws_per_epoch
from rebalance.domain.ledger import (
    CAPTION_FUNNEL_TEXT,
    CAPTION_HEADER,
    RETRIEVAL_HEADER,
    caption_funnel,
    retrieval_by_class,
    retrieval_summary,
    retrieval_table_rows,
    stage_changes,
)
from rebalance.report import plots
from rebalance.report.gallery import DEFAULT_CAP, DEFAULT_CLASSES_PER_PAGE, build_gallery, gallery_files
from rebalance.report.templates import render


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def build_report(
    title: str,
    original: LabeledDataset,
    final: LabeledDataset,
    runs: dict[str, TrainReport],
    frequency: ConceptFrequency | None = None,
    thresholds: tuple[int, int] = (10, 100),
    test: LabeledDataset | None = None,
    gallery_cap: int = DEFAULT_CAP,
    gallery_classes_per_page: int = DEFAULT_CLASSES_PER_PAGE,
) -> Report:
    """The report for one pipeline run (``runs`` maps a name such as "baseline" to its training report).

    With ``gallery_cap`` > 0 it holds the image gallery (``rebalance.report.gallery``); ``test``
    adds the rare-class test errors of the runs that recorded their predictions.
    """
    names = original.class_names()
    rare_max, common_max = thresholds
    buckets = class_buckets(original, rare_max_images=rare_max, common_max_images=common_max)
    before = class_counts(original)[0]
    stages: dict[str, np.ndarray] = {"original": before}
    changes = stage_changes(original, final)
    current = before.copy()
    for change, counts in changes.items():
        current = current + counts
        stages[f"after {change[1:]}"] = current
    stages["final"] = class_counts(final)[0]
    per_epoch = expected_draws_per_epoch(final) if "repeat_factor" in final.images.column_names else None
    if per_epoch is not None:
        stages["expected per epoch"] = per_epoch

    images = {
        "class_distribution": plots.class_distribution(names, stages),
        "stage_changes": plots.stage_changes(names, changes),
    }
    count_rows = [
        [
            name,
            bucket,
            *(f"{stage[i]:.1f}" if stage.dtype.kind == "f" else int(stage[i]) for stage in stages.values()),
        ]
        for i, (name, bucket) in enumerate(zip(names, buckets, strict=True))
    ]
    context: dict[str, Any] = {
        "title": title,
        "summary": f"{original.num_rows:,} images in {len(names)} classes before; {final.num_rows:,} after. "
        f"Buckets from the original training set: rare ≤ {rare_max} < common ≤ {common_max} < frequent images.",
        "counts": {"header": ["class", "bucket", *stages], "rows": count_rows},
        "changes": {
            "header": ["stage", "images"],
            "rows": [[k, f"{int(v.sum()):+d}"] for k, v in changes.items()],
        },
        "retrieval": None,
        "retrieval_by_class": None,
        "caption_funnel": None,
        "frequency": None,
        "accuracy": None,
        "gallery": None,
    }
    retrieval = retrieval_summary(final)
    if retrieval["retrieved"]:
        precision = retrieval["precision"]
        context["retrieval"] = (
            f"Retrieval kept {retrieval['retrieved']:,} pool image(s)"
            + ("" if retrieval["mean_score"] is None else f" (mean score {retrieval['mean_score']:.3f})")
            + (
                f"; {precision:.1%} of the {retrieval['with_reference_label']:,} with a reference label carry "
                "the class they were retrieved for (the labels were never shown to retrieval)."
                if precision is not None
                else "."
            )
        )
    by_class = retrieval_by_class(final)
    if by_class:
        context["retrieval_by_class"] = {"header": RETRIEVAL_HEADER, "rows": retrieval_table_rows(by_class)}
    funnel = caption_funnel(final)
    if funnel:
        text = CAPTION_FUNNEL_TEXT.replace("`", "")  # the page shows plain column names
        context["caption_funnel"] = {"text": text, "header": CAPTION_HEADER, "rows": funnel}
    if frequency is not None:
        images["concept_frequency"] = frequency.plot
        rows = [
            [r["concept"], r["count"], f"{r['frequency']:.2e}", str(r["top_synonym"]), r["bucket"]]
            for r in frequency.table.select(
                ["concept", "count", "frequency", "top_synonym", "bucket"]
            ).to_pylist()
        ]
        context["frequency"] = {
            "text": f"Captions mentioning each class, over {frequency.summary['captions']:,} captions; the tail "
            f"(bottom of the ranking) is {', '.join(frequency.summary['tail']) or 'empty'}.",
            "header": ["class", "captions", "frequency", "top synonym", "bucket"],
            "rows": rows,
        }
    figures: dict[str, Any] = {
        "retrieval": retrieval,
        "retrieval_by_class": by_class,
        "caption_funnel": [dict(zip(CAPTION_HEADER, row, strict=True)) for row in funnel],
        "stages": {k: v.tolist() for k, v in stages.items()},
        "changes": {k: int(v.sum()) for k, v in changes.items()},
        "classes": names,
        "buckets": buckets,
    }
    if runs:
        groups = [*BUCKETS, "top1", "mean_class_accuracy"]
        accuracy = {
            run: {
                group: report.metrics["bucket_accuracy"].get(group, report.metrics.get(group))
                for group in groups
            }
            for run, report in runs.items()
        }
        images["bucket_accuracy"] = plots.bucket_accuracy(accuracy)
        # Each rebalanced run is compared with the baseline of the same model ("cnn_" prefix).
        pairs = [
            (run, run.replace("rebalanced", "baseline"))
            for run in accuracy
            if "rebalanced" in run and run.replace("rebalanced", "baseline") in accuracy
        ]
        rows = []
        for group in groups:
            row = [group, *(_fmt(accuracy[run][group]) for run in accuracy)]
            for run, base in pairs:
                delta = (
                    None
                    if accuracy[run][group] is None or accuracy[base][group] is None
                    else accuracy[run][group] - accuracy[base][group]
                )
                row.append(
                    "–"
                    if delta is None
                    else {
                        "text": f"{delta:+.3f}",
                        "tone": "better" if delta > 0 else "worse" if delta < 0 else "",
                    }
                )
            rows.append(row)
        deltas = [f"Δ {run}" for run, _ in pairs]
        encoders = sorted({report.metrics["encoder"] for report in runs.values()})
        metric = next(iter(runs.values())).metrics.get("metric", "accuracy")
        explained = (
            "bucket accuracy = mean of the bucket's per-class accuracies"
            if metric == "accuracy"
            else "multi-label data: per-class average precision, averaged per bucket; mean_class_accuracy is the mAP"
        )
        context["accuracy"] = {
            "heading": f"{metric.replace('_', ' ').capitalize()} per frequency bucket",
            "text_before": f"Test-set {metric.replace('_', ' ')} of a head trained on ",
            "encoders": ", ".join(encoders),
            "text_after": f" features ({explained}).",
            "header": ["", *accuracy, *deltas],
            "rows": rows,
            "runs": [
                {
                    "name": run,
                    "loss": report.metrics["config"]["loss"],
                    "sampler": report.metrics["config"]["sampler"],
                    "details": f"{report.metrics['train_samples']:,} training images, "
                    f"{report.metrics['config']['epochs']} epochs on {report.metrics['config']['device']}.",
                    "warnings": report.metrics["warnings"],
                }
                for run, report in runs.items()
            ],
        }
        figures["accuracy"] = accuracy
    files: dict[str, bytes] = {}
    if gallery_cap:
        gallery = build_gallery(
            original,
            final,
            runs,
            test,
            cap=gallery_cap,
            classes_per_page=gallery_classes_per_page,
            thresholds=thresholds,
        )
        context["gallery"] = gallery
        figures["gallery"] = gallery.figures()
        files = gallery_files(gallery, title)
    return Report(render("report", **context), images, figures, files)


def page_weight(page: Path) -> tuple[int, int]:
    """What a browser loads to show ``page``: (bytes, files), the page and every image it shows."""
    import html.parser

    class _Sources(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sources: set[str] = set()

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            source = dict(attrs).get("src")
            if tag == "img" and source:
                self.sources.add(source)

    parser = _Sources()
    parser.feed(page.read_text())
    files = [page, *(page.parent / source for source in sorted(parser.sources))]
    return sum(path.stat().st_size for path in files if path.is_file()), len(files)
