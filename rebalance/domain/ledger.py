"""The stage ledger: what each stage added to or removed from each class, and what retrieval brought."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.domain.artifacts import LabeledDataset


def stage_changes(original: LabeledDataset, final: LabeledDataset) -> dict[str, np.ndarray]:
    """What each stage between ``original`` and ``final`` did to each class, in images (signed).

    ``+<source>`` for every source of added rows (``retrieved``, ``synthetic``): the rows added,
    counting those a later step removed again; then ``-<step>`` for each step that removed rows
    after ``original``, in the order they ran. ``original`` + Σ changes = ``final``, per class.
    """
    earlier = set(
        zip(original.removed["image_id"].to_pylist(), original.removed["step"].to_pylist(), strict=True)
    )
    removed = final.removed
    later = pa.array(
        [
            pair not in earlier
            for pair in zip(removed["image_id"].to_pylist(), removed["step"].to_pylist(), strict=True)
        ],
        pa.bool_(),
    )
    removed = removed.filter(later) if len(removed) else removed
    categories = final.categories["category_id"]
    changes: dict[str, np.ndarray] = {}
    # Rows added after `original`: still in `final`, or removed again by a later step.
    new_images = final.images.filter(
        pc.invert(pc.is_in(final.images["image_id"], value_set=original.images["image_id"]))
    )
    new_removed = removed.filter(
        pc.invert(pc.is_in(removed["image_id"], value_set=original.images["image_id"]))
    )
    for source in dict.fromkeys([*new_images["source"].to_pylist(), *new_removed["source"].to_pylist()]):
        kept_ids = new_images.filter(pc.equal(new_images["source"], source))["image_id"]
        kept = final.annotations.filter(pc.is_in(final.annotations["image_id"], value_set=kept_ids))
        dropped = new_removed.filter(pc.equal(new_removed["source"], source))
        changes[f"+{source}"] = _images_per_class(
            kept["image_id"], kept["category_id"], categories
        ) + _removed_per_class(dropped, categories)
    for step_name in dict.fromkeys(removed["step"].to_pylist()):
        changes[f"-{step_name}"] = -_removed_per_class(
            removed.filter(pc.equal(removed["step"], step_name)), categories
        )
    return changes


def _removed_per_class(removed: pa.Table, categories: pa.ChunkedArray) -> np.ndarray:
    lists = (
        removed["category_ids"].combine_chunks() if removed.num_rows else pa.array([], pa.list_(pa.int64()))
    )
    image_ids = (
        pc.take(removed["image_id"], pc.list_parent_indices(lists))
        if len(lists)
        else pa.array([], pa.int64())
    )
    return _images_per_class(image_ids, pc.list_flatten(lists), categories)


def _images_per_class(image_ids, category_ids, categories: pa.ChunkedArray) -> np.ndarray:
    """Images per class from (image, class) pairs, an image counted once per class."""
    pairs = (
        pa.table({"image_id": image_ids, "category_id": category_ids})
        .group_by(["image_id", "category_id"])
        .aggregate([])
    )
    positions = pc.index_in(pairs["category_id"], value_set=categories).to_numpy(zero_copy_only=False)
    return np.bincount(positions, minlength=len(categories)).astype(np.int64)


def retrieval_summary(dataset: LabeledDataset) -> dict[str, Any]:
    """Retrieved rows in ``dataset``: how many, their mean score and, where the pool had reference
    labels, the share whose reference label names the class they were retrieved for."""
    images = dataset.images
    if "retrieval_score" not in images.column_names:
        return {"retrieved": 0, "mean_score": None, "with_reference_label": 0, "precision": None}
    retrieved = images.filter(pc.equal(images["source"], "retrieved"))
    labelled = (
        retrieved.filter(pc.is_valid(retrieved["reference_label"]))
        if "reference_label" in retrieved.column_names
        else retrieved.slice(0, 0)
    )
    names = dict(zip(dataset.categories["category_id"].to_pylist(), dataset.class_names(), strict=True))
    assigned = dict(
        zip(
            dataset.annotations["image_id"].to_pylist(),
            dataset.annotations["category_id"].to_pylist(),
            strict=False,
        )
    )
    correct = [
        same_class_name(reference, names[assigned[image_id]])
        for image_id, reference in zip(
            labelled["image_id"].to_pylist(),
            labelled["reference_label"].to_pylist() if labelled.num_rows else [],
            strict=True,
        )
    ]
    return {
        "retrieved": retrieved.num_rows,
        "mean_score": pc.mean(retrieved["retrieval_score"]).as_py(),
        "with_reference_label": len(correct),
        "precision": sum(correct) / len(correct) if correct else None,
    }


def same_class_name(left: str, right: str) -> bool:
    """Whether two spellings name the same class ("t_shirt" and "T-shirt" do not; "ankle_boot" and "Ankle boot" do)."""
    return left.replace("_", " ").casefold() == right.replace("_", " ").casefold()


def reference_hits(dataset: LabeledDataset, added: pa.ChunkedArray | pa.Array) -> dict[int, list[bool]]:
    """Per category id, whether each label of the images ``added`` selects (a mask over the images)
    is the class the pool's ``reference_label`` names; images without a reference label are left out."""
    images = dataset.images
    chosen = images.filter(pc.and_(added, pc.is_valid(images["reference_label"])))
    names = dict(zip(dataset.categories["category_id"].to_pylist(), dataset.class_names(), strict=True))
    reference = dict(zip(chosen["image_id"].to_pylist(), chosen["reference_label"].to_pylist(), strict=True))
    annotations = dataset.annotations.filter(
        pc.is_in(dataset.annotations["image_id"], value_set=chosen["image_id"])
    )
    hits: dict[int, list[bool]] = {}
    for image_id, category_id in zip(
        annotations["image_id"].to_pylist(), annotations["category_id"].to_pylist(), strict=True
    ):
        hits.setdefault(category_id, []).append(same_class_name(reference[image_id], names[category_id]))
    return hits


RETRIEVAL_HEADER = [
    "class",
    "quota",
    "candidates",
    "kept",
    "estimated precision (90% interval)",
    "reference precision",
    "unmet quota",
]


def retrieval_by_class(dataset: LabeledDataset) -> list[dict[str, Any]]:
    """Per class that retrieval was asked to fill: its quota, the candidates it was offered, what the
    precision gate kept, the estimated precision of what was kept with its 90 % interval, the
    precision by the pool's reference labels where the pool had them (of the retrieved rows still in
    ``dataset``), and why the quota went unmet. Empty when no retrieval recorded its ledger."""
    categories = dataset.categories
    if "retrieval_quota" not in categories.column_names:
        return []
    images = dataset.images
    measured = {}
    if "reference_label" in images.column_names:
        measured = reference_hits(dataset, pc.equal(images["source"], "retrieved"))
    rows = []
    for row in categories.to_pylist():
        if not row["retrieval_quota"]:
            continue
        hits = measured.get(row["category_id"])
        rows.append(
            {
                "class": row["name"],
                "quota": row["retrieval_quota"],
                "candidates": row["retrieval_candidates"],
                "kept": row["retrieval_kept"],
                "estimate": row["precision_estimate"],
                "low": row["precision_low"],
                "high": row["precision_high"],
                "reference": sum(hits) / len(hits) if hits else None,
                "shortfall": row["retrieval_shortfall"],
            }
        )
    return rows


def retrieval_table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """``retrieval_by_class`` as table cells under ``RETRIEVAL_HEADER``."""

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return [
        [
            row["class"],
            str(row["quota"]),
            str(row["candidates"]),
            str(row["kept"]),
            "n/a"
            if row["estimate"] is None
            else f"{row['estimate']:.2f} [{row['low']:.2f}, {row['high']:.2f}]",
            share(row["reference"]),
            row["shortfall"] or "",
        ]
        for row in rows
    ]


# What the caption funnel's columns mean, for the dataset card and the HTML report alike.
CAPTION_FUNNEL_TEXT = (
    "Rows found by caption, as REAL retrieves (rebalance's docs/caption_retrieval.md): pool captions that "
    "name the class by a synonym, a seeded sample of them ranked by prompt-to-caption similarity (T2T), "
    "those at or above the prompt-to-image threshold (T2I), and those kept toward the balance target. "
    "Each row's `matched_form`, `t2t`, `t2i` and `caption_rank` are columns of the data."
)

CAPTION_HEADER = [
    "class",
    "captions matched",
    "ranked",
    "passed T2I",
    "kept",
    "download missing",
    "reference precision",
]


def caption_funnel(dataset: LabeledDataset) -> list[list[str]]:
    """Per class that caption retrieval was asked to fill (``add_caption_retrievals``' ledger), the
    funnel as table cells under ``CAPTION_HEADER``: captions that named it, the sample ranked, those
    that passed T2I ("n/a" without image vectors), those kept, those whose image did not join, and
    the precision of the rows still in ``dataset`` by the pool's reference labels, where it has them."""
    categories = dataset.categories
    if "caption_kept" not in categories.column_names:
        return []
    images = dataset.images
    hits = {}
    if "reference_label" in images.column_names and "matched_form" in images.column_names:
        hits = reference_hits(dataset, pc.is_valid(images["matched_form"]))
    rows = []
    for row in categories.to_pylist():
        if not row["caption_ranked"] and not row["caption_kept"]:
            continue
        measured = hits.get(row["category_id"])
        rows.append(
            [
                row["name"],
                str(row["caption_matched"]),
                str(row["caption_ranked"]),
                "n/a" if row["caption_passed_t2i"] is None else str(row["caption_passed_t2i"]),
                str(row["caption_kept"]),
                str(row["caption_missing"]),
                f"{sum(measured) / len(measured):.2f}" if measured else "n/a",
            ]
        )
    return rows
