"""The report step: one HTML page with plots for the whole run."""

from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt

from rebalance.core.registry import step
from rebalance.domain.artifacts import ConceptFrequency, LabeledDataset, Report, TrainReport


@step("report", role="reports")
def report(
    original: LabeledDataset,
    final: LabeledDataset,
    baseline: TrainReport | None = None,
    rebalanced: TrainReport | None = None,
    cnn_baseline: TrainReport | None = None,
    cnn_rebalanced: TrainReport | None = None,
    frequency: ConceptFrequency | None = None,
    test: LabeledDataset | None = None,
    *,
    title: str = "rebalance report",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    gallery_cap: NonNegativeInt = 24,
    gallery_classes_per_page: PositiveInt = 12,
) -> Report:
    """Write report.html and PNG plots: class counts after each stage, removals, and per-bucket accuracy.

    ``original`` is the data before rebalancing (it defines the rare/common/frequent buckets),
    ``final`` the data after; ``baseline`` and ``rebalanced`` are training reports to compare (a
    probe or head), ``cnn_baseline`` and ``cnn_rebalanced`` a second pair (a CNN on the images);
    ``frequency`` adds the concept-frequency plot and table.

    The gallery shows, per class, the retrieved, synthetic and removed images (least confident
    first, at most ``gallery_cap`` of a kind; 0 leaves the gallery out) and, given the ``test``
    split, the rare-class test images the rebalanced model gets wrong. The first
    ``gallery_classes_per_page`` classes are on report.html, the rest on ``gallery/page-N.html``,
    all listed in ``gallery/index.html``.
    """
    from rebalance.report.html import build_report

    given = {
        "baseline": baseline,
        "rebalanced": rebalanced,
        "cnn_baseline": cnn_baseline,
        "cnn_rebalanced": cnn_rebalanced,
    }
    runs = {name: run for name, run in given.items() if run is not None}
    return build_report(
        title,
        original,
        final,
        runs,
        frequency,
        (rare_max_images, common_max_images),
        test=test,
        gallery_cap=gallery_cap,
        gallery_classes_per_page=gallery_classes_per_page,
    )
