"""Count synonym phrases in a caption corpus at memory speed.

Design (why it is fast): captions arrive as one Arrow string array, i.e. a single UTF-8 byte
buffer plus offsets, and a compiled loop (numba) walks those bytes once. It lower-cases ASCII,
cuts tokens at non-alphanumeric bytes, applies the ``singular`` suffix rules, hashes each token
(FNV-1a, 64 bit) and looks it up in the vocabulary of synonym tokens (an open-addressing table).
Tokens outside that vocabulary end any match at once, so most words cost one hash and one probe.
The token ids of a caption then walk a trie of synonym phrases. Captions with non-ASCII text are
normalised in Python first (NFKC, case-folding), which leaves the compiled loop exact.

A 64-bit hash can in principle map an unknown token onto a vocabulary token; with ~10^4 vocabulary
tokens the chance per token is ~10^-15, far below any count that matters.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pyarrow as pa

from rebalance.text.normalize import normalize

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    """FNV-1a over bytes, as the compiled loop computes it."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def _table_size(count: int) -> int:
    return 1 << max(4, (2 * count).bit_length())


@dataclasses.dataclass(frozen=True)
class PhraseIndex:
    """The compiled form of a set of phrases: token hash table, trie, phrase -> groups."""

    phrases: list[str]  # normalised, one per phrase id
    token_keys: np.ndarray
    token_ids: np.ndarray
    edge_keys: np.ndarray
    edge_children: np.ndarray
    node_phrase: np.ndarray
    root_child: np.ndarray  # token id -> trie node of the one-token prefix, or -1
    vocabulary_size: int
    group_offsets: np.ndarray  # CSR: phrase id -> group ids
    group_ids: np.ndarray

    @property
    def tables(self) -> tuple[np.ndarray, ...]:
        """The arrays the compiled loop reads, in the order it unpacks them."""
        return (
            self.token_keys,
            self.token_ids,
            self.edge_keys,
            self.edge_children,
            self.node_phrase,
            self.root_child,
            self.group_offsets,
            self.group_ids,
        )

    @classmethod
    def build(cls, phrase_groups: dict[str, list[int]]) -> PhraseIndex:
        """``phrase_groups``: normalised phrase -> the groups (classes) it counts for."""
        phrases = sorted(phrase_groups)
        vocabulary: dict[str, int] = {}
        for phrase in phrases:
            for token in phrase.split(" "):
                vocabulary.setdefault(token, len(vocabulary))
        # Tables are filled as Python lists (plain ints are much faster than numpy scalars here)
        # with the same open addressing the compiled loop probes, then frozen into arrays.
        size = _table_size(len(vocabulary))
        keys, ids = [0] * size, [-1] * size
        for token, token_id in vocabulary.items():
            key = fnv1a(token.encode())
            slot = key & (size - 1)
            while ids[slot] != -1:
                slot = (slot + 1) & (size - 1)
            keys[slot], ids[slot] = key, token_id
        token_keys = np.array(keys, dtype=np.uint64)
        token_ids = np.array(ids, dtype=np.int64)
        edges: dict[tuple[int, int], int] = {}
        node_phrase = [-1]
        for phrase_id, phrase in enumerate(phrases):
            node = 0
            for token in phrase.split(" "):
                key = (node, vocabulary[token])
                if key not in edges:
                    edges[key] = len(node_phrase)
                    node_phrase.append(-1)
                node = edges[key]
            node_phrase[node] = phrase_id
        root_child = np.full(len(vocabulary), -1, dtype=np.int64)
        for (node, token_id), child in edges.items():
            if node == 0:
                root_child[token_id] = child
        edge_size = _table_size(len(edges))
        keys, children = [-1] * edge_size, [-1] * edge_size
        for (node, token_id), child in edges.items():
            key = node * len(vocabulary) + token_id
            slot = (key * 0x9E3779B97F4A7C15 & _MASK) & (edge_size - 1)
            while keys[slot] != -1:
                slot = (slot + 1) & (edge_size - 1)
            keys[slot], children[slot] = key, child
        edge_keys = np.array(keys, dtype=np.int64)
        edge_children = np.array(children, dtype=np.int64)
        groups = [phrase_groups[p] for p in phrases]
        group_offsets = np.zeros(len(phrases) + 1, dtype=np.int64)
        group_offsets[1:] = np.cumsum([len(g) for g in groups])
        group_ids = np.array([g for gs in groups for g in gs], dtype=np.int64)
        return cls(
            phrases,
            token_keys,
            token_ids,
            edge_keys,
            edge_children,
            np.array(node_phrase, dtype=np.int64),
            root_child,
            len(vocabulary),
            group_offsets,
            group_ids,
        )


@dataclasses.dataclass
class PhraseCounts:
    """Running totals: per phrase and per group, captions (or occurrences) that matched."""

    phrases: np.ndarray
    groups: np.ndarray
    captions: int = 0


def count_batch(index: PhraseIndex, captions: pa.Array, counts: PhraseCounts, *, per_caption: bool) -> None:
    """Add the matches in ``captions`` (an Arrow string array without nulls) to ``counts``."""
    if len(captions) == 0:
        return
    captions = captions.cast(pa.large_string())
    # The compiled loop defers captions with non-ASCII bytes instead of counting them; they are
    # normalised here (NFKC, case-folding) and counted in a second, small pass.
    deferred = _count_arrow(index, captions, counts, per_caption, normalised=False)
    if len(deferred):
        rewritten = pa.array(
            [normalize(text) for text in captions.take(deferred).to_pylist()], pa.large_string()
        )
        _count_arrow(index, rewritten, counts, per_caption, normalised=True)
    counts.captions += len(captions)


def _count_arrow(
    index: PhraseIndex, captions: pa.Array, counts: PhraseCounts, per_caption: bool, normalised: bool
) -> np.ndarray:
    offsets, data = _buffers(captions)
    deferred = np.zeros(len(captions), dtype=np.bool_)
    _scan(
        data,
        offsets,
        index.tables,
        index.vocabulary_size,
        counts.phrases,
        counts.groups,
        per_caption,
        min(len(captions), 8 * numba.get_num_threads()),
        normalised,
        deferred,
    )
    return np.flatnonzero(deferred)


def match_pairs(index: PhraseIndex, captions: pa.Array, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (caption position, group) such that the caption mentions the group, once each."""
    captions = captions.cast(pa.large_string())
    deferred = _count_arrow(
        index,
        captions,
        PhraseCounts(np.zeros(len(index.phrases), np.int64), np.zeros(groups, np.int64)),
        True,
        False,
    )
    rows = [(np.arange(len(captions)), captions, False)]
    if len(deferred):
        rewritten = pa.array([normalize(t) for t in captions.take(deferred).to_pylist()], pa.large_string())
        rows.append((deferred, rewritten, True))
    found_captions, found_groups = [], []
    for positions, texts, normalised in rows:
        counts = PhraseCounts(np.zeros(len(index.phrases), np.int64), np.zeros(groups, np.int64))
        _count_arrow(index, texts, counts, True, normalised)  # sizes the record buffers exactly
        capacity = max(int(counts.groups.sum()), 1)
        pair_captions = np.empty(capacity, dtype=np.int64)
        pair_groups = np.empty(capacity, dtype=np.int64)
        fill = np.zeros(1, dtype=np.int64)
        offsets, data = _buffers(texts)
        _scan_range(
            data,
            offsets,
            0,
            len(texts),
            index.tables,
            index.vocabulary_size,
            np.zeros(len(index.phrases), np.int64),
            np.zeros(groups, np.int64),
            True,
            normalised,
            np.zeros(len(texts), dtype=np.bool_),
            pair_captions,
            pair_groups,
            fill,
        )
        found_captions.append(positions[pair_captions[: fill[0]]])
        found_groups.append(pair_groups[: fill[0]])
    return np.concatenate(found_captions), np.concatenate(found_groups)


def _buffers(captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.frombuffer(
        captions.buffers()[1], dtype=np.int64, count=len(captions) + 1, offset=captions.offset * 8
    )
    data = (
        np.frombuffer(captions.buffers()[2], dtype=np.uint8)
        if captions.buffers()[2] is not None
        else np.zeros(1, np.uint8)
    )
    return offsets, data


_WORD = np.zeros(256, dtype=np.bool_)
_WORD[48:58] = _WORD[65:91] = _WORD[97:123] = _WORD[128:] = True  # digits, letters, any UTF-8 byte


@numba.njit(cache=True, nogil=True, inline="always")
def _singular_hash(data, start, end, full, minus1, minus2, minus3):
    """The hash of data[start:end] reduced by the rules of normalize.singular.

    ``full`` is the FNV-1a of the whole lower-cased token, ``minusN`` that of it without its last
    N bytes.
    """
    length = end - start
    if (
        length >= 4
        and (data[end - 3] | 32) == 105
        and (data[end - 2] | 32) == 101
        and (data[end - 1] | 32) == 115
    ):
        return (minus3 ^ np.uint64(121)) * np.uint64(0x100000001B3)  # -ies -> -y
    if length >= 4 and (data[end - 2] | 32) == 101 and (data[end - 1] | 32) == 115 and _es_plural(data, end):
        return minus2  # -ches -shes -sses -xes -zes: strip "es"
    if length >= 3 and (data[end - 1] | 32) == 115:
        before = data[end - 2] | 32
        if before != 115 and before != 117 and before != 105:  # not -ss -us -is
            return minus1
    return full


@numba.njit(cache=True, nogil=True, inline="always")
def _es_plural(data, end):
    c3 = data[end - 3] | 32
    c4 = data[end - 4] | 32 if end - 4 >= 0 else 0
    if c3 == 120 or c3 == 122:  # -xes -zes
        return True
    if c3 == 104 and (c4 == 99 or c4 == 115):  # -ches -shes
        return True
    return c3 == 115 and c4 == 115  # -sses


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan(
    data,
    offsets,
    tables,
    vocabulary_size,
    phrase_counts,
    group_counts,
    per_caption,
    chunks,
    normalised,
    deferred,
):  # pragma: no cover - compiled
    captions = len(offsets) - 1
    # Each chunk of captions counts into its own row (integer sums: the result does not depend
    # on the number of threads).
    phrase_rows = np.zeros((chunks, len(phrase_counts)), dtype=np.int64)
    group_rows = np.zeros((chunks, len(group_counts)), dtype=np.int64)
    no_pairs = np.zeros(0, dtype=np.int64)
    for chunk in numba.prange(chunks):
        _scan_range(
            data,
            offsets,
            chunk * captions // chunks,
            (chunk + 1) * captions // chunks,
            tables,
            vocabulary_size,
            phrase_rows[chunk],
            group_rows[chunk],
            per_caption,
            normalised,
            deferred,
            no_pairs,
            no_pairs,
            no_pairs,
        )
    phrase_counts += phrase_rows.sum(axis=0)
    group_counts += group_rows.sum(axis=0)


@numba.njit(cache=True, nogil=True)
def _scan_range(
    data,
    offsets,
    first,
    last,
    tables,
    vocabulary_size,
    phrase_counts,
    group_counts,
    per_caption,
    normalised,
    deferred,
    pair_captions,
    pair_groups,
    pair_fill,
):  # pragma: no cover - compiled
    token_keys, token_ids, edge_keys, edge_children, node_phrase, root_child, group_offsets, group_ids = (
        tables
    )
    token_mask = len(token_keys) - 1
    edge_mask = len(edge_keys) - 1
    phrase_last = np.full(len(phrase_counts), -1, dtype=np.int64)
    group_last = np.full(len(group_counts), -1, dtype=np.int64)
    longest = 1
    for caption in range(first, last):
        longest = max(longest, offsets[caption + 1] - offsets[caption])
    caption_tokens = np.empty(longest // 2 + 2, dtype=np.int64)
    for caption in range(first, last):
        count = 0
        skip = False
        position = offsets[caption]
        stop = offsets[caption + 1]
        while position < stop:
            if not _WORD[data[position]]:
                position += 1
                continue
            # One pass per token: hash while scanning, keeping the hashes of the prefixes that
            # end 1, 2 and 3 bytes earlier, so the singular rules pick a cut without rescanning.
            start = position
            value = np.uint64(0xCBF29CE484222325)
            minus1 = minus2 = minus3 = value
            while position < stop:
                byte = data[position]
                if not _WORD[byte]:
                    break
                if byte >= 128:
                    if not normalised:
                        skip = True
                        break
                else:
                    byte |= 32  # ASCII letters to lower case; digits already have this bit
                minus3, minus2, minus1 = minus2, minus1, value
                value = (value ^ np.uint64(byte)) * np.uint64(0x100000001B3)
                position += 1
            if skip:
                break
            key = _singular_hash(data, start, position, value, minus1, minus2, minus3)
            slot = np.int64(key & np.uint64(token_mask))
            token_id = -1
            while token_ids[slot] != -1:
                if token_keys[slot] == key:
                    token_id = token_ids[slot]
                    break
                slot = (slot + 1) & token_mask
            caption_tokens[count] = token_id
            count += 1
        if skip:
            deferred[caption] = True
            continue
        for begin in range(count):
            token_id = caption_tokens[begin]
            if token_id < 0:
                continue
            node = root_child[token_id]  # the first step needs no hash probe
            cursor = begin
            while node >= 0:
                phrase = node_phrase[node]
                if phrase >= 0 and (not per_caption or phrase_last[phrase] != caption):
                    phrase_last[phrase] = caption
                    phrase_counts[phrase] += 1
                    for g in range(group_offsets[phrase], group_offsets[phrase + 1]):
                        group = group_ids[g]
                        if not per_caption or group_last[group] != caption:
                            group_last[group] = caption
                            group_counts[group] += 1
                            if len(pair_captions):  # recording (caption, group) matches
                                pair_captions[pair_fill[0]] = caption
                                pair_groups[pair_fill[0]] = group
                                pair_fill[0] += 1
                cursor += 1
                if cursor >= count or caption_tokens[cursor] < 0:
                    break
                edge = node * vocabulary_size + caption_tokens[cursor]
                slot = np.int64((np.uint64(edge) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(edge_mask))
                child = -1
                while edge_keys[slot] != -1:
                    if edge_keys[slot] == edge:
                        child = edge_children[slot]
                        break
                    slot = (slot + 1) & edge_mask
                node = child


def phrase_groups(
    synonyms: dict[str, list[str]], phrase_of: dict[str, str]
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Normalised phrase -> positions of the classes listing it, and the phrases several classes share.

    ``phrase_of`` maps each synonym to its normalised phrase ("" when nothing is left of it).
    """
    classes = list(synonyms)
    groups: dict[str, list[int]] = {}
    for position, concept in enumerate(classes):
        for synonym in synonyms[concept]:
            phrase = phrase_of[synonym]
            if phrase and position not in groups.setdefault(phrase, []):
                groups[phrase].append(position)
    ambiguous = {phrase: [classes[g] for g in gs] for phrase, gs in groups.items() if len(gs) > 1}
    return groups, ambiguous
