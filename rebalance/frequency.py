"""Concept frequency in caption corpora, as in "The Neglected Tails of Vision-Language Models"
(Parashar et al., CVPR 2024, REAL): how many captions mention each class, by any of its synonyms.

    >>> from rebalance.frequency import count_concepts
    >>> count_concepts(["two dogs and a cat", "a puppy"], {"dog": ["dog", "puppy"], "cat": ["cat"]})

Matching is on normalised tokens (see ``rebalance.text.normalize``): case, Unicode form,
punctuation and plural endings do not matter, and a synonym only matches whole words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rebalance.errors import DataError
from rebalance.text.counter import PhraseCounts, PhraseIndex, count_batch, match_pairs, phrase_groups
from rebalance.text.normalize import normalize


def _batches(
    captions: Iterable[str] | Iterable[pa.Array] | pa.Array | pa.ChunkedArray, batch_size: int
) -> Iterable[pa.Array]:
    """Arrow arrays of captions: Arrow input passes through; Python strings are batched."""
    if isinstance(captions, pa.ChunkedArray):
        yield from captions.chunks
        return
    if isinstance(captions, pa.Array):
        yield captions
        return
    pending: list[str] = []
    seen = 0
    for item in captions:
        if isinstance(item, (pa.Array, pa.ChunkedArray)):
            yield from _batches(item, batch_size)
            continue
        if not isinstance(item, str):
            raise DataError(
                f"caption {seen + len(pending)} is a {type(item).__name__}, not a string: {item!r:.80}"
            )
        pending.append(item)
        if len(pending) == batch_size:
            seen += len(pending)
            yield pa.array(pending, pa.large_string())
            pending = []
    if pending:
        yield pa.array(pending, pa.large_string())


def count_concepts(
    captions: Iterable[str] | Iterable[pa.Array] | pa.Array | pa.ChunkedArray,
    synonyms: Mapping[str, Sequence[str]],
    *,
    per_caption: bool = True,
    batch_size: int = 1_000_000,
) -> pd.DataFrame:
    """Count, per concept and per synonym, the captions that mention it.

    Args:
        captions: strings (any iterable, streamed in batches of ``batch_size``), Arrow string
            arrays, or an iterable of them (e.g. ``rebalance.io.captions.iter_captions``).
        synonyms: concept name -> its synonyms (phrases of one or more words).
        per_caption: count each caption at most once per concept and per synonym (REAL's
            definition); False counts every occurrence.

    Returns:
        One row per concept: ``concept``, ``count``, ``top_synonym`` (its most frequent synonym,
        REAL-Prompt's class name; ties to the first listed) and ``synonym_counts`` (synonym ->
        count). ``attrs`` holds ``captions`` (how many were read), ``ambiguous`` (normalised
        phrases listed by several concepts: they count for each, and are reported here) and
        ``empty`` (concepts whose synonyms normalise to nothing).
    """
    classes = list(synonyms)
    phrase_of = {s: normalize(s) for synonym_list in synonyms.values() for s in synonym_list}
    groups, ambiguous = phrase_groups({k: list(v) for k, v in synonyms.items()}, phrase_of)
    index = PhraseIndex.build(groups) if groups else None
    counts = PhraseCounts(np.zeros(len(groups), dtype=np.int64), np.zeros(len(classes), dtype=np.int64))
    for batch in _batches(captions, batch_size):
        if batch.null_count:
            raise DataError(f"{batch.null_count} caption(s) are null; drop or fill them first")
        if not pa.types.is_string(batch.type) and not pa.types.is_large_string(batch.type):
            raise DataError(f"captions must be strings, got Arrow type {batch.type}")
        if index is not None:
            count_batch(index, batch, counts, per_caption=per_caption)
        else:
            counts.captions += len(batch)
    phrase_count = dict(zip(index.phrases, counts.phrases.tolist(), strict=True)) if index else {}
    rows: list[dict[str, Any]] = []
    for position, concept in enumerate(classes):
        by_synonym = {s: phrase_count.get(phrase_of[s], 0) for s in synonyms[concept]}
        top = max(by_synonym, key=by_synonym.get) if by_synonym else None
        rows.append(
            {
                "concept": concept,
                "count": int(counts.groups[position]),
                "top_synonym": top,
                "synonym_counts": by_synonym,
            }
        )
    table = pd.DataFrame(rows, columns=["concept", "count", "top_synonym", "synonym_counts"])
    table.attrs.update(
        captions=counts.captions,
        ambiguous=ambiguous,
        empty=[c for c in classes if not any(phrase_of[s] for s in synonyms[c])],
    )
    return table


def _sample_keys(seed: int, positions: np.ndarray) -> np.ndarray:
    """A seeded pseudo-random key per global caption position (splitmix64), for bottom-k sampling."""
    with np.errstate(over="ignore"):
        value = positions.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return value ^ (value >> np.uint64(31))


def sample_matching_captions(
    captions: Iterable[str] | Iterable[pa.Array] | pa.Array | pa.ChunkedArray,
    synonyms: Mapping[str, Sequence[str]],
    *,
    per_concept: int,
    seed: int = 0,
    batch_size: int = 1_000_000,
) -> dict[str, list[str]]:
    """A uniform random sample of up to ``per_concept`` captions that mention each concept.

    Bottom-k sampling on a seeded hash of each caption's position: one streaming pass, memory
    bounded by the samples, and the same sample for the same corpus and seed however it is batched.
    """
    classes = list(synonyms)
    phrase_of = {s: normalize(s) for synonym_list in synonyms.values() for s in synonym_list}
    groups, _ = phrase_groups({k: list(v) for k, v in synonyms.items()}, phrase_of)
    samples: dict[int, list[tuple[int, str]]] = {g: [] for g in range(len(classes))}
    if not groups:
        return {c: [] for c in classes}
    index = PhraseIndex.build(groups)
    seen = 0
    for batch in _batches(captions, batch_size):
        positions, found = match_pairs(index, batch, len(classes))
        keys = _sample_keys(seed, positions + seen)
        order = np.lexsort((keys, found))
        ranked_groups = found[order]
        starts = np.searchsorted(ranked_groups, ranked_groups, side="left")
        keep = order[np.arange(len(order)) - starts < per_concept]  # this batch's bottom-k per group
        texts = batch.take(pa.array(positions[keep])).to_pylist() if len(keep) else []
        for group, key, text in zip(found[keep].tolist(), keys[keep].tolist(), texts, strict=True):
            samples[group].append((key, text))
        for group in samples:
            samples[group] = sorted(samples[group])[:per_concept]
        seen += len(batch)
    return {classes[g]: [text for _, text in kept] for g, kept in samples.items()}
