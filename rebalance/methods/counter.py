"""Count synonym phrases in a caption corpus at memory speed.

Design (why it is fast): captions arrive as one Arrow string array, i.e. a UTF-8 byte buffer plus
offsets, and compiled loops (numba) walk it in three passes over blocks of captions. Each pass is a
tight loop whose iterations barely depend on each other, which a CPU overlaps well; one fused loop
with all the branches ran at half the speed.

1. Word bits: one bit per byte says "letter, digit or non-ASCII", computed 8 bytes at a time with
   SWAR arithmetic. A token's start and end are then found with a trailing-zero count over the next
   56 bytes' bits, not a branch per byte.
2. Token keys: a token of at most 8 bytes *is* its key, its bytes lower-cased and read with one
   unaligned 8-byte load: exact, no hashing. Longer tokens are hashed 8 bytes at a time. Tokens
   are matched as written (a synonym's plurals are phrases of their own, see
   ``rebalance.methods.inflection``), so no suffix rule runs per token. Keys are looked up in a
   cuckoo table: two slots, no probe loop.
3. Counting: only vocabulary tokens are kept. A one-word phrase has its token's id; longer phrases
   walk a token trie whose edges sit in a second cuckoo table. A "last caption seen" mark per
   phrase and per group counts each at most once per caption without a branch.

Captions with non-ASCII bytes are normalised in Python first (NFKC, case-folding, diacritics removed) and counted in a
second, small pass over text that is already in normal form.

A token longer than 8 bytes is keyed by a 64-bit hash, which could in principle equal another
token's key; with ~10^4 vocabulary tokens the chance per token is ~10^-15, far below any count
that matters.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from rebalance.domain.text import fold_to_ascii, normalize

_MASK = (1 << 64) - 1
_LONG_SEED = 0xCBF29CE484222325
_LONG_PRIME = 0x100000001B3
# Two multiplicative hashes (golden ratio, xxHash's prime 2) choose a key's two cuckoo slots.
_FIRST = 0x9E3779B97F4A7C15
_SECOND = 0xC2B2AE3D27D4EB4F
_NO_EDGE = _MASK
# The same constants as the compiled loops read them (numpy scalars are frozen in as uint64).
_LONG_SEED_U64, _LONG_PRIME_U64 = np.uint64(_LONG_SEED), np.uint64(_LONG_PRIME)
_FIRST_U64, _SECOND_U64 = np.uint64(_FIRST), np.uint64(_SECOND)


def token_key(token: str) -> int:
    """The key of a normalised token, as the compiled loop forms it."""
    raw = token.encode()
    if len(raw) <= 8:
        return int.from_bytes(raw, "little")
    key = _LONG_SEED
    for start in range(0, len(raw), 8):
        key = ((key ^ int.from_bytes(raw[start : start + 8], "little")) * _LONG_PRIME) & _MASK
        key ^= key >> 32
    return key


def _cuckoo_table(
    entries: dict[int, int], empty_key: int, missing: int
) -> tuple[np.ndarray, np.ndarray, np.uint64]:
    """Keys -> values in a two-choice cuckoo table: ``(keys, values, shift)``.

    A key lives in slot ``(key * _FIRST) >> shift`` or ``(key * _SECOND) >> shift``, so a lookup
    reads two slots and never loops. At load below one half, insertion almost always succeeds;
    when it does not, the table doubles.
    """
    bits = max(4, (2 * len(entries)).bit_length())
    while True:
        shift = 64 - bits
        keys, values = [empty_key] * (1 << bits), [missing] * (1 << bits)
        for key, value in entries.items():
            slot = ((key * _FIRST) & _MASK) >> shift
            for _ in range(64 + 4 * bits):
                if keys[slot] == empty_key:
                    keys[slot], values[slot] = key, value
                    break
                keys[slot], key = key, keys[slot]
                values[slot], value = value, values[slot]
                first = ((key * _FIRST) & _MASK) >> shift
                slot = ((key * _SECOND) & _MASK) >> shift if slot == first else first
            else:
                break
        else:
            return np.array(keys, dtype=np.uint64), np.array(values, dtype=np.int32), np.uint64(shift)
        bits += 1


@dataclasses.dataclass(frozen=True)
class PhraseIndex:
    """The compiled form of a set of phrases: token table, phrase trie, phrase -> groups.

    Phrase ids put the one-word phrases first, each with the id of its token, so that a token's
    own phrase needs no lookup.
    """

    phrases: list[str]  # normalised, one per phrase id
    vocabulary_size: int
    longest_phrase: int  # in tokens: each token can end at most this many matches
    token_keys: np.ndarray
    token_ids: np.ndarray
    token_shift: np.uint64
    edge_keys: np.ndarray  # (node * (vocabulary_size + 1) + token) of each non-root trie edge
    edge_children: np.ndarray
    edge_shift: np.uint64
    root_child: np.ndarray  # token id -> trie node of the one-token prefix of a longer phrase, or -1
    node_phrase: np.ndarray
    single_phrase: np.ndarray  # token id -> its one-word phrase, or len(phrases)
    phrase_group: np.ndarray  # phrase -> its group, or -1 when several classes list it
    group_offsets: np.ndarray  # CSR: phrase id -> group ids
    group_ids: np.ndarray

    @property
    def tables(self) -> tuple:
        """What the compiled loop reads: every field but ``phrases``, in order."""
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self)[1:])

    @classmethod
    def build(cls, phrase_groups: dict[str, list[int]]) -> PhraseIndex:
        """``phrase_groups``: normalised phrase -> the groups (classes) it counts for."""
        phrases = sorted(phrase_groups, key=lambda phrase: (" " in phrase, phrase))
        singles = sum(" " not in phrase for phrase in phrases)
        vocabulary = {phrase: token_id for token_id, phrase in enumerate(phrases[:singles])}
        for phrase in phrases[singles:]:
            for token in phrase.split(" "):
                vocabulary.setdefault(token, len(vocabulary))
        size = len(vocabulary)
        token_keys, token_ids, token_shift = _cuckoo_table(
            {token_key(token): token_id for token, token_id in vocabulary.items()}, 0, size
        )
        root_child = np.full(size + 1, -1, dtype=np.int32)
        edges: dict[int, int] = {}
        node_phrase = [-1]
        for phrase_id, phrase in enumerate(phrases[singles:], start=singles):
            first, *rest = (vocabulary[token] for token in phrase.split(" "))
            if root_child[first] < 0:
                root_child[first] = len(node_phrase)
                node_phrase.append(-1)
            node = int(root_child[first])
            for token_id in rest:
                edge = node * (size + 1) + token_id
                if edge not in edges:
                    edges[edge] = len(node_phrase)
                    node_phrase.append(-1)
                node = edges[edge]
            node_phrase[node] = phrase_id
        edge_keys, edge_children, edge_shift = _cuckoo_table(edges, _NO_EDGE, -1)
        single_phrase = np.full(size + 1, len(phrases), dtype=np.int32)
        single_phrase[:singles] = np.arange(singles)
        group_lists = [phrase_groups[phrase] for phrase in phrases]
        group_offsets = np.zeros(len(phrases) + 1, dtype=np.int64)
        group_offsets[1:] = np.cumsum([len(groups) for groups in group_lists])
        return cls(
            phrases=phrases,
            vocabulary_size=size,
            longest_phrase=max(phrase.count(" ") + 1 for phrase in phrases),
            token_keys=token_keys,
            token_ids=token_ids,
            token_shift=token_shift,
            edge_keys=edge_keys,
            edge_children=edge_children,
            edge_shift=edge_shift,
            root_child=root_child,
            node_phrase=np.array(node_phrase, dtype=np.int32),
            single_phrase=single_phrase,
            phrase_group=np.array([gs[0] if len(gs) == 1 else -1 for gs in group_lists], dtype=np.int64),
            group_offsets=group_offsets,
            group_ids=np.array([g for groups in group_lists for g in groups], dtype=np.int32),
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
    # The compiled loop defers captions with non-ASCII bytes instead of counting them; they are
    # normalised here (NFKC, case-folding, diacritics removed) and counted in a second, small pass.
    deferred = _count(index, _buffers(captions), counts, per_caption, normalised=False)
    if len(deferred):
        _count(index, _buffers(_normalised(captions, deferred)), counts, per_caption, normalised=True)
    counts.captions += len(captions)


def _normalised(captions: pa.Array, positions: np.ndarray) -> pa.Array:
    """The deferred captions, folded to ASCII where every character folds on its own, else
    normalised in full (Python, ~10x slower)."""
    texts = captions.take(positions).to_pylist()
    return pa.array([_ascii_or_normal(text) for text in texts], pa.large_string())


def _ascii_or_normal(text: str) -> str:
    folded = fold_to_ascii(text)
    return normalize(text) if folded is None else folded


def _count(
    index: PhraseIndex,
    buffers: tuple[np.ndarray, np.ndarray, np.ndarray],
    counts: PhraseCounts,
    per_caption: bool,
    normalised: bool,
) -> np.ndarray:
    """Add the matches in ``buffers`` (see ``_buffers``) to ``counts``; the captions deferred."""
    data, bits, offsets = buffers
    captions = len(offsets) - 1
    deferred = np.zeros(captions, dtype=np.bool_)
    _scan(
        data,
        bits,
        offsets,
        index.tables,
        counts.phrases,
        counts.groups,
        per_caption,
        min(captions, 8 * numba.get_num_threads()),
        normalised,
        deferred,
    )
    return np.flatnonzero(deferred)


def match_pairs(
    index: PhraseIndex, captions: pa.Array, groups: int, record_below: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every (caption position, group) such that the caption mentions the group, once each;
    only groups below ``record_below`` when given (the classes, without their synonyms' groups)."""
    below = groups if record_below is None else record_below
    found_captions, found_groups, deferred = _pairs(index, captions, groups, below, normalised=False)
    if len(deferred):
        texts = _normalised(captions, deferred)
        again_captions, again_groups, _ = _pairs(index, texts, groups, below, normalised=True)
        found_captions = np.concatenate([found_captions, deferred[again_captions]])
        found_groups = np.concatenate([found_groups, again_groups])
    return found_captions, found_groups


def _pairs(
    index: PhraseIndex, captions: pa.Array, groups: int, record_below: int, normalised: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(caption, group) pairs of ``captions``, and the positions deferred for normalisation.

    One parallel pass, as fast as counting: each chunk of captions records its pairs into its own
    region of a buffer sized for two pairs a caption (int32: a batch holds under 2**31 captions). A chunk that finds more keeps counting
    without writing, and only that chunk is scanned again, into a region of its exact size.
    """
    data, bits, offsets = _buffers(captions)
    count = len(offsets) - 1
    chunks = max(1, min(count, 8 * numba.get_num_threads()))
    bounds = (np.arange(chunks + 1, dtype=np.int64) * count) // chunks
    deferred = np.zeros(count, dtype=np.bool_)
    parts = []
    firsts, lasts = bounds[:-1], bounds[1:]
    capacity = 2 * (lasts - firsts) + 1024
    while len(firsts):
        starts = np.concatenate([[0], np.cumsum(capacity)])
        pair_captions = np.empty(int(starts[-1]), dtype=np.int32)
        pair_groups = np.empty_like(pair_captions)
        fills = np.zeros(len(firsts), dtype=np.int64)
        # Chunks are handed out one at a time, not split evenly up front: the threads share the
        # cores with parquet decoding, and a thread that waits on a core would hold back its half.
        with numba.parallel_chunksize(1):
            _record(
                data, bits, offsets, firsts, lasts, starts, index.tables, len(index.phrases), groups,
                record_below, normalised, deferred, pair_captions, pair_groups, fills,
            )  # fmt: skip
        done = fills <= capacity
        for chunk in np.flatnonzero(done):
            region = slice(starts[chunk], starts[chunk] + fills[chunk])
            parts.append((firsts[chunk], pair_captions[region], pair_groups[region]))
        # Rare: the chunks that found more pairs than their region holds run again, sized exactly.
        firsts, lasts, capacity = firsts[~done], lasts[~done], fills[~done]
    parts.sort(key=lambda part: part[0])
    return (
        np.concatenate([np.zeros(0, np.int32), *(part[1] for part in parts)]).astype(np.int64),
        np.concatenate([np.zeros(0, np.int32), *(part[2] for part in parts)]).astype(np.int64),
        np.flatnonzero(deferred),
    )


@numba.njit(cache=True, nogil=True, parallel=True)
def _record(
    data,
    bits,
    offsets,
    firsts,
    lasts,
    starts,
    tables,
    phrases,
    groups,
    record_below,
    normalised,
    deferred,
    pair_captions,
    pair_groups,
    fills,
):  # pragma: no cover - compiled
    for chunk in numba.prange(len(firsts)):
        region = slice(starts[chunk], starts[chunk + 1])
        _scan_range(
            data,
            bits,
            offsets,
            firsts[chunk],
            lasts[chunk],
            tables,
            np.zeros(phrases, np.int64),
            np.zeros(groups, np.int64),
            True,
            normalised,
            deferred,
            pair_captions[region],
            pair_groups[region],
            fills[chunk : chunk + 1],
            record_below,
        )


def _buffers(captions: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The caption bytes (at least 8), their word bits, and offsets into them from 0."""
    # The text is read where Arrow holds it: only the offsets of a `string` array (32-bit) are widened.
    if not pa.types.is_string(captions.type):
        captions = captions.cast(pa.large_string())
    width = np.dtype(np.int32 if pa.types.is_string(captions.type) else np.int64)
    offsets = np.frombuffer(
        captions.buffers()[1], dtype=width, count=len(captions) + 1, offset=captions.offset * width.itemsize
    ).astype(np.int64)
    start, stop = int(offsets[0]), int(offsets[-1])
    buffer = captions.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8)[start:stop] if buffer is not None else np.zeros(0, np.uint8)
    if len(data) < 8:  # the loops read 8 bytes at a time
        data = np.concatenate([data, np.zeros(8 - len(data), np.uint8)])
    bits = np.zeros(len(data) // 8 + 16, dtype=np.uint8)  # 8 bytes of slack for the 8-byte reads
    _word_bits(data, bits)
    return data, bits, offsets - start


@intrinsic
def _load_u64(typingctx, array, position):  # pragma: no cover - compiled
    """The 8 bytes of a uint8 array from ``position``, little-endian, at any alignment."""

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = builder.gep(view.data, [args[1]])
        return builder.load(builder.bitcast(pointer, ir.IntType(64).as_pointer()), align=1)

    return types.uint64(array, position), codegen


@intrinsic
def _trailing_zeros(typingctx, value):  # pragma: no cover - compiled
    """The number of trailing zero bits of a uint64 (64 for zero)."""

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


_HIGH_BITS = np.uint64(0x8080808080808080)
_ALL_BITS = np.uint64(_MASK)


@numba.njit(cache=True, nogil=True, inline="always")
def _is_word_byte(byte):  # pragma: no cover - compiled
    return (np.uint8(byte - 48) < 10) | (np.uint8((byte | 32) - 97) < 26) | (byte >= 128)


@numba.njit(cache=True, nogil=True, parallel=True)
def _word_bits(data, bits):  # pragma: no cover - compiled
    """Bit i of ``bits`` (little-endian) says whether data[i] is a letter, digit or non-ASCII byte."""
    words = len(data) // 8
    for k in numba.prange(words):
        # Per byte lane, the high bit of "x + c" says "x >= 0x80 - c": two such tests bound a range.
        value = _load_u64(data, 8 * k)
        low7 = value & np.uint64(0x7F7F7F7F7F7F7F7F)
        folded = low7 | np.uint64(0x2020202020202020)
        letter = (folded + np.uint64(0x1F1F1F1F1F1F1F1F)) & ~(folded + np.uint64(0x0505050505050505))
        digit = (low7 + np.uint64(0x5050505050505050)) & ~(low7 + np.uint64(0x4646464646464646))
        word = (letter | digit | value) & _HIGH_BITS
        bits[k] = np.uint8(((word >> np.uint64(7)) * np.uint64(0x0102040810204080)) >> np.uint64(56))
    for i in range(8 * words, len(data)):
        bits[words] |= np.uint8(_is_word_byte(data[i])) << np.uint8(i - 8 * words)


@numba.njit(cache=True, nogil=True, inline="always")
def _word_window(bits, position):  # pragma: no cover - compiled
    """The word bits from ``position`` on: at least 57 of them are valid."""
    return _load_u64(bits, position >> 3) >> np.uint64(position & 7)


@numba.njit(cache=True, nogil=True, inline="always")
def _token_word(data, position, length):  # pragma: no cover - compiled
    """data[position:position + length] (1 to 8 bytes) as a uint64, ASCII letters lower-cased."""
    start = min(position, len(data) - 8)
    value = _load_u64(data, start) >> np.uint64(8 * (position - start))
    value |= (~value & _HIGH_BITS) >> np.uint64(2)  # sets 0x20: lower case for letters, no-op for digits
    return value & (_ALL_BITS >> np.uint64(64 - 8 * length))


@numba.njit(cache=True, nogil=True)
def _token_keys(data, bits, offsets, first, last, normalised, keys, token_end, deferred):  # pragma: no cover
    """The keys of the tokens of captions first..last-1, in order, into ``keys``.

    ``token_end[c - first]`` is the number of keys written up to caption c. A caption with a
    non-ASCII byte, in text not yet normalised, is marked in ``deferred`` and gets no keys.
    """
    count = 0
    for caption in range(first, last):
        caption_start = count
        position = offsets[caption]
        stop = offsets[caption + 1]
        while position < stop:
            window = _word_window(bits, position)
            if window == 0:
                position += 56
                continue
            skipped = _trailing_zeros(window)
            position += np.int64(skipped)
            if position >= stop:
                break
            # The token's end, from the same window while it holds the whole token (most do).
            run = np.int64(_trailing_zeros(~(window >> skipped)))
            end = position + run
            if run >= 56 - np.int64(skipped):
                end = position
                while True:
                    run = np.int64(_trailing_zeros(~_word_window(bits, end)))
                    end += run
                    if run < 56 or end >= stop:
                        break
            end = min(end, stop)
            length = end - position
            if length <= 8:
                key = _token_word(data, position, length)
                ascii = (key & _HIGH_BITS) == 0
            else:
                key = _LONG_SEED_U64
                ascii = True
                for offset in range(0, length, 8):
                    part = _token_word(data, position + offset, min(8, length - offset))
                    ascii &= (part & _HIGH_BITS) == 0
                    key = (key ^ part) * _LONG_PRIME_U64
                    key ^= key >> np.uint64(32)
            if not ascii and not normalised:
                deferred[caption] = True
                count = caption_start
                break
            keys[count] = key
            count += 1
            position = end
        token_end[caption - first] = count
    return count


@numba.njit(cache=True, nogil=True, inline="always")
def _cuckoo_get(keys, values, shift, key, missing):  # pragma: no cover - compiled
    first = np.int64((key * _FIRST_U64) >> shift)
    if keys[first] == key:
        return values[first]
    second = np.int64((key * _SECOND_U64) >> shift)
    return values[second] if keys[second] == key else missing


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan(
    data, bits, offsets, tables, phrase_counts, group_counts, per_caption, chunks, normalised, deferred
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
            bits,
            offsets,
            chunk * captions // chunks,
            (chunk + 1) * captions // chunks,
            tables,
            phrase_rows[chunk],
            group_rows[chunk],
            per_caption,
            normalised,
            deferred,
            no_pairs,
            no_pairs,
            no_pairs,
            0,
        )
    phrase_counts += phrase_rows.sum(axis=0)
    group_counts += group_rows.sum(axis=0)


_BLOCK_CAPTIONS = 256
_BLOCK_TOKENS = 1 << 16
_LAST, _COUNT, _GROUP = 0, 1, 2  # columns of the per-phrase and per-group records


@numba.njit(cache=True, nogil=True)
def _scan_range(
    data,
    bits,
    offsets,
    first,
    last,
    tables,
    phrase_counts,
    group_counts,
    per_caption,
    normalised,
    deferred,
    pair_captions,
    pair_groups,
    pair_fill,
    record_below,
):  # pragma: no cover - compiled
    (
        vocabulary_size,
        longest_phrase,
        token_keys,
        token_ids,
        token_shift,
        edge_keys,
        edge_children,
        edge_shift,
        root_child,
        node_phrase,
        single_phrase,
        phrase_group,
        group_offsets,
        group_ids,
    ) = tables
    phrases = len(phrase_counts)
    recording = len(pair_captions) > 0
    # A local count, stored once at the end: threads' fills share a cache line.
    fill = pair_fill[0] if recording else 0
    # One record per phrase (last caption, count, group, padding to 32 bytes) and per group (last
    # caption, count), so that marking one touches one cache line.
    phrase_state = np.zeros((phrases, 4), dtype=np.int64)
    phrase_state[:, _LAST] = -1
    phrase_state[:, _GROUP] = phrase_group
    group_state = np.zeros((len(group_counts), 2), dtype=np.int64)
    group_state[:, _LAST] = -1
    every = not per_caption
    edge_stride = np.uint64(vocabulary_size + 1)
    capacity = _BLOCK_TOKENS  # a caption of n bytes has at most n // 2 + 1 tokens
    for caption in range(first, last):
        capacity = max(capacity, (offsets[caption + 1] - offsets[caption]) // 2 + 1)
    keys = np.empty(capacity, np.uint64)
    token_end = np.empty(_BLOCK_CAPTIONS, np.int64)
    vocabulary_tokens = np.empty(capacity + 1, np.int32)
    ordinals = np.empty(capacity + 1, np.int64)
    matched = np.empty(capacity * longest_phrase, np.int32)
    start = first
    while start < last:
        stop, tokens = start + 1, (offsets[start + 1] - offsets[start]) // 2 + 1
        while stop < last and stop - start < _BLOCK_CAPTIONS:
            tokens += (offsets[stop + 1] - offsets[stop]) // 2 + 1
            if tokens > capacity:
                break
            stop += 1
        _token_keys(data, bits, offsets, start, stop, normalised, keys, token_end, deferred)
        begin = 0
        for caption in range(start, stop):
            end = token_end[caption - start]
            kept = 0
            for ordinal in range(begin, end):  # the caption's vocabulary tokens, in order
                token_id = _cuckoo_get(token_keys, token_ids, token_shift, keys[ordinal], vocabulary_size)
                vocabulary_tokens[kept] = token_id
                ordinals[kept] = ordinal
                kept += token_id != vocabulary_size
            begin = end
            ordinals[kept] = -2  # no phrase continues past the last token
            found = 0
            for i in range(kept):
                token_id = vocabulary_tokens[i]
                phrase = single_phrase[token_id]
                matched[found] = phrase
                found += phrase != phrases
                node = root_child[token_id]
                if node >= 0:
                    j = i + 1
                    while ordinals[j] == ordinals[j - 1] + 1:
                        edge = np.uint64(node) * edge_stride + np.uint64(vocabulary_tokens[j])
                        node = _cuckoo_get(edge_keys, edge_children, edge_shift, edge, -1)
                        if node < 0:
                            break
                        phrase = node_phrase[node]
                        matched[found] = phrase
                        found += phrase >= 0
                        j += 1
            for k in range(found):
                phrase = matched[k]
                phrase_state[phrase, _COUNT] += (phrase_state[phrase, _LAST] != caption) | every
                phrase_state[phrase, _LAST] = caption
                single = phrase_state[phrase, _GROUP]
                # lo..hi are group ids for a phrase of one class, else positions in group_ids
                lo, hi = single, single + 1
                if single < 0:
                    lo, hi = group_offsets[phrase], group_offsets[phrase + 1]
                for g in range(lo, hi):
                    group = g if single >= 0 else group_ids[g]
                    new = group_state[group, _LAST] != caption
                    group_state[group, _COUNT] += new | every
                    group_state[group, _LAST] = caption
                    if recording and new and group < record_below:
                        # Past the buffer, only the count goes on: the caller reruns with room.
                        if fill < len(pair_captions):
                            pair_captions[fill] = caption
                            pair_groups[fill] = group
                        fill += 1
        start = stop
    if recording:
        pair_fill[0] = fill
    phrase_counts += phrase_state[:, _COUNT]
    group_counts += group_state[:, _COUNT]
