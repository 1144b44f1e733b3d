"""Render the baselines panel of ``rebalance compare`` as markdown (the README's tables) and HTML."""

from __future__ import annotations

from typing import Any

from rebalance.report.templates import render

# The accuracy figures a panel shows (keys of compare's results) and their column headers.
METRICS = ("rare", "common", "frequent", "top1")
HEADERS = ("rare", "common", "frequent", "top-1")


def _mean_std(row: dict[str, Any], metric: str) -> str:
    mean, std = row["mean"][metric], row["std"][metric]
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _difference(interval: dict[str, float | None] | None) -> str:
    if interval is None:
        return "–"
    if interval["low"] is None:
        return f"{interval['mean']:+.3f}"
    return f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"


def panel_tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) for each model: accuracy mean ± std, then the paired differences."""
    seeds = ", ".join(str(s) for s in result["seeds"])
    tables = []
    for model, summary in result["models"].items():
        best = summary["best_loss_only"]
        tables.append(
            (
                f"{model}: test accuracy, mean ± std over seeds {seeds}",
                ["variant", "data", *HEADERS],
                [
                    [row["variant"], row["data"], *(_mean_std(row, metric) for metric in METRICS)]
                    for row in summary["rows"]
                ],
            )
        )
        tables.append(
            (
                f"{model}: difference to the best loss-only baseline ({best}, by top-1), "
                "mean and paired 95% interval over seeds",
                ["variant", *(f"Δ {header}" for header in HEADERS)],
                [
                    [row["variant"], *(_difference(row["vs_best"][metric]) for metric in METRICS)]
                    for row in summary["rows"]
                    if row["variant"] != best
                ],
            )
        )
    if result["ablation"]:
        models = list(result["models"])
        tables.append(
            (
                "ablation: the rebalanced runs with one stage off (seed 0)",
                ["variant", *(f"{model} {header}" for model in models for header in HEADERS)],
                [
                    [
                        row["variant"],
                        *(
                            "–" if row["models"][m][metric] is None else f"{row['models'][m][metric]:.3f}"
                            for m in models
                            for metric in METRICS
                        ),
                    ]
                    for row in result["ablation"]
                ],
            )
        )
    return tables


def data_summary(data: dict[str, Any]) -> str:
    """One sentence: what the pipeline's data stages added and removed (images, all classes)."""
    retrieval, changes = data["retrieval"], data["changes"]
    parts = []
    if retrieval["retrieved"]:
        precision = retrieval["precision"]
        parts.append(
            f"retrieved {retrieval['retrieved']:,} pool images"
            + (
                f" ({precision:.1%} carry the right label by the pool's reference labels)"
                if precision is not None
                else ""
            )
        )
    parts += [
        f"added {count:,} {stage[1:]} rows"
        for stage, count in changes.items()
        if stage.startswith("+") and stage != "+retrieved"
    ]
    parts += [
        f"removed {-count:,} images by {stage[1:]}"
        for stage, count in changes.items()
        if stage.startswith("-")
    ]
    return "At seed 0 the pipeline " + (", ".join(parts) if parts else "changed no rows") + "."


def panel_markdown(result: dict[str, Any]) -> str:
    """The panel as markdown tables, each under a bold caption; byte-stable for the same result."""
    blocks = [data_summary(result["data"])] if result.get("data") else []
    for caption, header, rows in panel_tables(result):
        lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def panel_html(
    result: dict[str, Any],
    title: str,
    gallery: dict[str, Any] | None = None,
    gallery_prefix: str = "",
    gallery_run: str = "",
) -> str:
    """A standalone page with the same tables, every cell escaped; with ``gallery`` (a report's
    ``report.json`` figures["gallery"]), the gallery of that run's first page, its files under
    ``gallery_prefix``."""
    return render(
        "panel",
        title=title,
        tables=panel_tables(result),
        gallery=gallery,
        gallery_prefix=gallery_prefix,
        gallery_run=gallery_run,
    )
