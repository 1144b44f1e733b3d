"""REAL's retrieval by caption (Parashar et al., CVPR 2024): pool rows whose caption names a class
by any written form of its synonyms, a seeded sample per class, ranked by prompt-to-caption
similarity (T2T), filtered by prompt-to-image similarity (T2I), N a class.

Matching is ``concept_frequency``'s own matcher over the same ``mine_synonyms`` output, so a
caption is a candidate for a class exactly when it counts as a mention of it.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Literal

import numpy as np
import pyarrow as pa

from rebalance.domain.artifacts.captions import CANDIDATE_SCHEMA, kth_smallest_keys
from rebalance.domain.text import normalize
from rebalance.methods.counter import match_pairs
from rebalance.methods.frequency import CompiledSynonyms, position_keys

MultiClass = Literal["best", "drop"]


def sample_keys(seed: int, file: str, rows: np.ndarray) -> np.ndarray:
    """A seeded pseudo-random key per (file, row): the same whatever the sharding or batching."""
    salt = zlib.crc32(file.rsplit("/", 1)[-1].encode()) << 32
    return position_keys(seed ^ salt, rows)


def batch_candidates(
    compiled: CompiledSynonyms,
    captions: pa.Array,
    file: str,
    first_row: int,
    below: np.ndarray,
    seed: int,
) -> tuple[pa.Table, np.ndarray]:
    """The candidates in one batch of captions whose sample key is below their class's ``below``
    (0 for a class that is not wanted; the k-th smallest key so far for a class whose sample is
    full, so that a head class's millions of matches are never copied), and per class how many
    captions of the batch named it (every class, wanted or not).

    ``first_row`` is the batch's first row within ``file``.
    """
    num_classes = len(compiled.classes)
    empty = CANDIDATE_SCHEMA.empty_table()
    if compiled.index is None or len(captions) == 0:
        return empty, np.zeros(num_classes, np.int64)
    positions, groups = match_pairs(compiled.index, captions, compiled.groups, num_classes)
    matched = np.bincount(groups, minlength=num_classes)
    named = np.bincount(positions, minlength=len(captions))
    wanted = below[groups] > 0
    positions, groups = positions[wanted], groups[wanted]
    keys = sample_keys(seed, file, positions + first_row)
    keep = keys <= below[groups]
    positions, groups, keys = positions[keep], groups[keep], keys[keep]
    if not len(positions):
        return empty, matched
    files = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(positions), np.int32)), pa.array([file]))
    table = pa.table(
        [
            pa.array(groups, pa.int32()),
            pa.array(keys, pa.uint64()),
            files,
            pa.array(positions + first_row, pa.int64()),
            pa.array(named[positions], pa.int32()),
        ],
        schema=CANDIDATE_SCHEMA,
    )
    return table, matched


def sample_thresholds(table: pa.Table, wanted: np.ndarray, k: int) -> np.ndarray:
    """Per class, the key a new candidate must not exceed to enter its bottom-``k`` sample: the
    k-th smallest key held (no limit while fewer are held), 0 for a class that is not wanted."""
    if table.num_rows == 0:
        limit = np.full(len(wanted), np.iinfo(np.uint64).max, dtype=np.uint64)
    else:
        classes, keys = table["class_index"].to_numpy(), table["sample_key"].to_numpy()
        limit = kth_smallest_keys(classes, keys, k, len(wanted))
    return np.where(wanted, limit, 0).astype(np.uint64)


def matched_form(caption: str, forms: list[str]) -> str | None:
    """The first of a class's written forms (normalised, in the order its synonyms are listed)
    that ``caption`` mentions as whole words."""
    text = f" {normalize(caption)} "
    return next((form for form in forms if f" {form} " in text), None)


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which candidates are kept, in order (``rows`` into the candidate table, best first per
    class), their rank among the class's ranked candidates, and the per-class funnel."""

    rows: np.ndarray
    ranks: np.ndarray
    ranked: np.ndarray
    passed_t2i: np.ndarray
    kept: np.ndarray


def choose(
    classes: np.ndarray,
    order_scores: np.ndarray,
    t2i: np.ndarray | None,
    min_t2i: float | None,
    classes_named: np.ndarray,
    item: np.ndarray,
    quotas: np.ndarray,
    multi_class: MultiClass,
) -> Choice:
    """Keep up to ``quotas[c]`` candidates of each class, best ``order_scores`` first.

    A candidate passes T2I when ``t2i`` is given and at least ``min_t2i``. ``item`` identifies
    the pool row, so that one row goes to at most one class: with ``multi_class = "best"`` a row
    that is a candidate of several classes goes to the one it scores best for (T2T when ranked);
    with ``"drop"`` a caption that names two or more of the dataset's classes is not used at all.
    """
    num_classes = len(quotas)
    ranked = np.bincount(classes, minlength=num_classes)
    order = np.lexsort((-order_scores, classes))
    ranks = np.empty(len(classes), np.int64)
    starts = np.searchsorted(classes[order], np.arange(num_classes))
    ranks[order] = np.arange(len(order)) - starts[classes[order]] + 1
    usable = np.ones(len(classes), bool)
    if t2i is not None and min_t2i is not None:
        usable &= t2i >= min_t2i
    passed = np.bincount(classes[usable], minlength=num_classes)
    if multi_class == "drop":
        usable &= classes_named < 2
    else:
        # Among a row's usable candidacies, the one with the highest score wins.
        by_score = np.lexsort((classes, -order_scores, item))
        best = np.zeros(len(classes), bool)
        candidates = by_score[usable[by_score]]
        first = np.ones(len(candidates), bool)
        first[1:] = item[candidates][1:] != item[candidates][:-1]
        best[candidates[first]] = True
        usable &= best
    kept_rows = order[usable[order]]
    kept_classes = classes[kept_rows]
    within = np.arange(len(kept_rows)) - np.searchsorted(kept_classes, kept_classes, side="left")
    kept_rows = kept_rows[within < quotas[kept_classes]]
    return Choice(
        kept_rows,
        ranks[kept_rows],
        ranked,
        passed,
        np.bincount(classes[kept_rows], minlength=num_classes),
    )
