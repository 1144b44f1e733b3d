"""Assemble the run report: stage-by-stage class counts, removals, and baseline vs rebalanced accuracy."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from rebalance.core.artifacts import ConceptFrequency, LabeledDataset, Report, TrainReport
from rebalance.report import plots
from rebalance.steps.stats import (
    BUCKETS,
    class_buckets,
    class_counts,
    expected_draws_per_epoch,
    retrieval_summary,
    stage_changes,
)

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.better{color:#17692a}.worse{color:#a11}"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def build_report(
    title: str,
    original: LabeledDataset,
    final: LabeledDataset,
    runs: dict[str, TrainReport],
    frequency: ConceptFrequency | None = None,
    thresholds: tuple[int, int] = (10, 100),
) -> Report:
    """The report for one pipeline run (``runs`` maps a name such as "baseline" to its training report)."""
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
            html.escape(name),
            bucket,
            *(f"{stage[i]:.1f}" if stage.dtype.kind == "f" else int(stage[i]) for stage in stages.values()),
        ]
        for i, (name, bucket) in enumerate(zip(names, buckets, strict=True))
    ]
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{original.num_rows:,} images in {len(names)} classes before; {final.num_rows:,} after. "
        f"Buckets from the original training set: rare ≤ {rare_max} < common ≤ {common_max} < frequent images.</p>",
        "<h2>Class distribution, stage by stage</h2>",
        '<img src="plots/class_distribution.png" alt="class distribution per stage">',
        _table(["class", "bucket", *stages], count_rows),
        "<h2>What each stage added and removed</h2>",
        '<img src="plots/stage_changes.png" alt="images added and removed per stage">',
        _table(["stage", "images"], [[html.escape(k), f"{int(v.sum()):+d}"] for k, v in changes.items()])
        if changes
        else "<p>No stage added or removed images.</p>",
    ]
    retrieval = retrieval_summary(final)
    if retrieval["retrieved"]:
        precision = retrieval["precision"]
        sections.append(
            f"<p>Retrieval kept {retrieval['retrieved']:,} pool image(s) (mean score {retrieval['mean_score']:.3f})"
            + (
                f"; {precision:.1%} of the {retrieval['with_reference_label']:,} with a reference label carry "
                "the class they were retrieved for (the labels were never shown to retrieval)."
                if precision is not None
                else "."
            )
            + "</p>"
        )
    if frequency is not None:
        images["concept_frequency"] = frequency.plot
        rows = [
            [
                html.escape(r["concept"]),
                r["count"],
                f"{r['frequency']:.2e}",
                html.escape(str(r["top_synonym"])),
                r["bucket"],
            ]
            for r in frequency.table.select(
                ["concept", "count", "frequency", "top_synonym", "bucket"]
            ).to_pylist()
        ]
        sections += [
            "<h2>Concept frequency in captions</h2>",
            f"<p>Captions mentioning each class, over {frequency.summary['captions']:,} captions; the tail "
            f"(bottom of the ranking) is {html.escape(', '.join(frequency.summary['tail']) or 'empty')}.</p>",
            '<img src="plots/concept_frequency.png" alt="concept frequency">',
            _table(["class", "captions", "frequency", "top synonym", "bucket"], rows),
        ]
    figures: dict[str, Any] = {
        "retrieval": retrieval,
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
                    else f'<span class="{"better" if delta > 0 else "worse" if delta < 0 else ""}">{delta:+.3f}</span>'
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
        sections += [
            f"<h2>{metric.replace('_', ' ').capitalize()} per frequency bucket</h2>",
            f"<p>Test-set {metric.replace('_', ' ')} of a head trained on <code>{html.escape(', '.join(encoders))}</code> "
            f"features ({explained}).</p>",
            '<img src="plots/bucket_accuracy.png" alt="accuracy per bucket">',
            _table(["", *accuracy, *deltas], rows),
        ]
        for run, report in runs.items():
            config = report.metrics["config"]
            sections.append(
                f"<p><b>{html.escape(run)}</b>: loss <code>{config['loss']}</code>, sampler <code>{config['sampler']}</code>, {report.metrics['train_samples']:,} training images, {config['epochs']} epochs on {config['device']}.</p>"
            )
            sections += [
                f'<p class="worse">warning: {html.escape(w)}</p>' for w in report.metrics["warnings"]
            ]
        figures["accuracy"] = accuracy
    page = f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{"".join(sections)}</body></html>\n'
    return Report(page, images, figures)
