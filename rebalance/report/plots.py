"""Matplotlib figures for the report, rendered to PNG bytes (headless, reproducible)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: batch jobs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" stamp, so the same figure gives the same bytes across matplotlib patch releases.
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def class_distribution(class_names: list[str], stages: dict[str, np.ndarray]) -> bytes:
    """Images per class after each stage (log scale), classes sorted by the first stage's count."""
    first = next(iter(stages.values()))
    order = np.argsort(-first, kind="stable")
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(class_names) + 2), 4))
    width = 0.8 / len(stages)
    positions = np.arange(len(class_names))
    for index, (stage, counts) in enumerate(stages.items()):
        axes.bar(positions + index * width, np.maximum(counts[order], 0.8), width, label=stage)
    axes.set_yscale("log")
    axes.set_xticks(positions + 0.4 - width / 2, [class_names[i] for i in order], rotation=45, ha="right")
    axes.set_ylabel("images per class (log)")
    axes.set_title("Class distribution after each stage")
    axes.legend(fontsize=8)
    return _png(figure)


def stage_changes(class_names: list[str], changes: dict[str, np.ndarray]) -> bytes:
    """Images added (above zero) and removed (below zero) per class by each stage, stacked."""
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(class_names) + 2), 3.5))
    above, below = np.zeros(len(class_names)), np.zeros(len(class_names))
    for stage, counts in changes.items():
        counts = np.asarray(counts, dtype=float)
        base = np.where(counts >= 0, above, below)
        axes.bar(class_names, counts, bottom=base, label=stage)
        above += np.maximum(counts, 0)
        below += np.minimum(counts, 0)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylabel("images added / removed")
    axes.set_title("What each stage added and removed")
    axes.tick_params(axis="x", rotation=45)
    if changes:
        axes.legend(fontsize=8)
    return _png(figure)


def bucket_accuracy(runs: dict[str, dict[str, float | None]]) -> bytes:
    """Grouped bars: accuracy per bucket (and overall) for each training run."""
    groups = list(next(iter(runs.values())))
    figure, axes = plt.subplots(figsize=(6.5, 3.5))
    width = 0.8 / len(runs)
    positions = np.arange(len(groups))
    for index, (run, values) in enumerate(runs.items()):
        heights = [np.nan if values[g] is None else values[g] for g in groups]
        bars = axes.bar(positions + index * width, heights, width, label=run)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(positions + 0.4 - width / 2, groups)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy")
    axes.set_title("Baseline vs rebalanced, per frequency bucket")
    # Beside the axes, not on them: inside, the legend covered the rare-class bars.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _png(figure)


def concept_frequency(names: list[str], counts: np.ndarray, tail: np.ndarray) -> bytes:
    """Rank vs caption count (log scale), the tail shaded."""
    order = np.argsort(-counts, kind="stable")
    ranks = np.arange(1, len(order) + 1)
    figure, axes = plt.subplots(figsize=(6.5, 3.5))
    axes.plot(ranks, np.maximum(counts[order], 0.8), marker="o", markersize=3)
    tail_ranks = ranks[tail[order]]
    if len(tail_ranks):
        axes.axvspan(
            tail_ranks.min() - 0.5, tail_ranks.max() + 0.5, color="tab:red", alpha=0.15, label="tail"
        )
        axes.legend(fontsize=8)
    axes.set_yscale("log")
    axes.set_xlabel("class rank by caption count")
    axes.set_ylabel("captions mentioning the class (log)")
    axes.set_title("Concept frequency in the caption corpus")
    if len(order) <= 30:
        for rank, index in zip(ranks, order, strict=True):
            axes.annotate(names[index], (rank, max(counts[index], 0.8)), fontsize=6, rotation=45)
    return _png(figure)
