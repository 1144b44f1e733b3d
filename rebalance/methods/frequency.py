"""Concept frequency in caption corpora, as in "The Neglected Tails of Vision-Language Models"
(Parashar et al., CVPR 2024, REAL): how many captions mention each class, by any of its synonyms.

    >>> from rebalance.methods.frequency import count_concepts
    >>> count_concepts(["two dogs and a cat", "a puppy"], {"dog": ["dog", "puppy"], "cat": ["cat"]})

Matching is on normalised tokens (see ``rebalance.domain.text``): case, Unicode form, diacritics and
punctuation do not matter, a synonym only matches whole words, and captions are matched as
written. A synonym matches its own written forms (``rebalance.methods.inflection``): itself and the
plurals of its head noun ("mouse": "mouse", "mice"), and a plural-only synonym ("shorts") only
itself. Overlapping mentions all count: "a polar bear" mentions both "polar bear" and "bear".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rebalance.errors import DataError
from rebalance.methods.counter import PhraseCounts, PhraseIndex, count_batch, match_pairs
from rebalance.methods.inflection import written_forms


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


@dataclasses.dataclass(frozen=True)
class CompiledSynonyms:
    """Synonyms compiled for counting, in one pass, at three levels that each count a caption once:
    written forms (the index's phrases), synonyms and classes.

    The counter's groups are the classes (``0 .. C-1``) followed by the distinct synonyms (one
    group per normalised synonym, ``C ..``): each form counts for every class that lists a
    synonym it is a form of, and for each such synonym.
    """

    classes: list[str]
    groups: int  # the counter's groups: the classes, then the distinct synonyms
    index: PhraseIndex | None  # None when no synonym has a form
    ambiguous: dict[str, list[str]]  # a form several classes count -> those classes
    # For reading the counts: per class its synonyms and forms; for all classes in a row, their
    # groups and phrase ids, class c's at offsets[c]:offsets[c + 1].
    class_synonyms: list[list[str]]
    class_forms: list[list[str]]
    synonym_groups: np.ndarray
    synonym_offsets: list[int]
    form_phrases: np.ndarray
    form_offsets: list[int]

    @classmethod
    def of(cls, synonyms: Mapping[str, Sequence[str]]) -> CompiledSynonyms:
        """``build``, remembered for the last few synonym sets: counting a corpus shard by shard
        (or batch by batch) compiles its synonyms once, as ``re`` caches compiled patterns."""
        return _compiled(tuple((concept, tuple(listed)) for concept, listed in synonyms.items()))

    @classmethod
    def build(cls, synonyms: Mapping[str, Sequence[str]]) -> CompiledSynonyms:
        classes = list(synonyms)
        forms = written_forms(s for listed in synonyms.values() for s in listed)
        own = list(dict.fromkeys(written[0] for written in forms.values() if written))
        synonym_group = {synonym: len(classes) + n for n, synonym in enumerate(own)}
        groups: dict[str, list[int]] = {}
        for position, concept in enumerate(classes):
            for synonym in synonyms[concept]:
                for form in forms[synonym]:
                    counted = groups.setdefault(form, [])
                    for group in (position, synonym_group[forms[synonym][0]]):
                        if group not in counted:
                            counted.append(group)
        ambiguous = {
            form: [classes[g] for g in counted if g < len(classes)]
            for form, counted in groups.items()
            if sum(g < len(classes) for g in counted) > 1
        }
        index = PhraseIndex.build(groups) if groups else None
        phrase_id = {phrase: number for number, phrase in enumerate(index.phrases)} if index else {}
        class_synonyms = [[s for s in synonyms[concept] if forms[s]] for concept in classes]
        class_forms = [list(dict.fromkeys(f for s in listed for f in forms[s])) for listed in class_synonyms]
        return cls(
            classes,
            len(classes) + len(synonym_group),
            index,
            ambiguous,
            class_synonyms,
            class_forms,
            np.array([synonym_group[forms[s][0]] for listed in class_synonyms for s in listed], np.int64),
            np.cumsum([0] + [len(listed) for listed in class_synonyms]).tolist(),
            np.array([phrase_id[f] for written in class_forms for f in written], np.int64),
            np.cumsum([0] + [len(written) for written in class_forms]).tolist(),
        )


@functools.lru_cache(maxsize=8)
def _compiled(synonyms: tuple[tuple[str, tuple[str, ...]], ...]) -> CompiledSynonyms:
    return CompiledSynonyms.build(dict(synonyms))


def count_concepts(
    captions: Iterable[str] | Iterable[pa.Array] | pa.Array | pa.ChunkedArray,
    synonyms: Mapping[str, Sequence[str]],
    *,
    per_caption: bool = True,
    batch_size: int = 1_000_000,
) -> pd.DataFrame:
    """Count, per concept, per synonym and per written form, the captions that mention it.

    Args:
        captions: strings (any iterable, streamed in batches of ``batch_size``), Arrow string
            arrays, or an iterable of them (e.g. ``rebalance.io.captions.iter_captions``).
        synonyms: concept name -> its synonyms (phrases of one or more words).
        per_caption: count each caption at most once per concept, per synonym and per form
            (REAL's definition); False counts every occurrence.

    Returns:
        One row per concept: ``concept``, ``count``, ``synonym_counts`` (synonym as listed ->
        captions mentioning any of its forms), ``form_counts`` (written form -> count: which
        forms matched) and ``top_synonym``: its most frequent form, as written in the captions
        (REAL-Prompt's class name; ties to the first listed). ``attrs`` holds ``captions`` (how
        many were read), ``ambiguous`` (forms listed by several concepts: they count for each)
        and ``empty`` (concepts whose synonyms normalise to nothing).
    """
    compiled = CompiledSynonyms.of(synonyms)
    index = compiled.index
    counts = PhraseCounts(
        np.zeros(len(index.phrases) if index else 0, dtype=np.int64),
        np.zeros(compiled.groups, dtype=np.int64),
    )
    for batch in _batches(captions, batch_size):
        if batch.null_count:
            raise DataError(f"{batch.null_count} caption(s) are null; drop or fill them first")
        if not pa.types.is_string(batch.type) and not pa.types.is_large_string(batch.type):
            raise DataError(f"captions must be strings, got Arrow type {batch.type}")
        if index is not None:
            count_batch(index, batch, counts, per_caption=per_caption)
        else:
            counts.captions += len(batch)
    # One gather each for every class's synonym and form counts, as Python ints; then slices.
    synonym_counts = counts.groups[compiled.synonym_groups].tolist()
    form_counts = counts.phrases[compiled.form_phrases].tolist()
    columns: dict[str, list[Any]] = {"top_synonym": [], "synonym_counts": [], "form_counts": []}
    for position in range(len(compiled.classes)):
        start, stop = compiled.synonym_offsets[position : position + 2]
        by_synonym = dict(zip(compiled.class_synonyms[position], synonym_counts[start:stop], strict=True))
        start, stop = compiled.form_offsets[position : position + 2]
        by_form = dict(zip(compiled.class_forms[position], form_counts[start:stop], strict=True))
        # max keeps the first of the most frequent, in the order the synonyms are listed
        columns["top_synonym"].append(max(by_form, key=by_form.get) if by_form else None)
        columns["synonym_counts"].append(by_synonym)
        columns["form_counts"].append(by_form)
    table = pd.DataFrame(
        {"concept": compiled.classes, "count": counts.groups[: len(compiled.classes)].tolist(), **columns}
    )
    table.attrs.update(
        captions=counts.captions,
        ambiguous=compiled.ambiguous,
        empty=[c for c, listed in zip(compiled.classes, compiled.class_synonyms, strict=True) if not listed],
    )
    return table


def position_keys(seed: int, positions: np.ndarray) -> np.ndarray:
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
    compiled = CompiledSynonyms.of(synonyms)
    classes = compiled.classes
    samples: dict[int, list[tuple[int, str]]] = {g: [] for g in range(len(classes))}
    if compiled.index is None:
        return {c: [] for c in classes}
    seen = 0
    for batch in _batches(captions, batch_size):
        positions, found = match_pairs(compiled.index, batch, compiled.groups, len(classes))
        of_class = found < len(classes)  # the other groups are synonyms
        positions, found = positions[of_class], found[of_class]
        keys = position_keys(seed, positions + seen)
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
