"""Retrieval of extra real examples for under-represented classes (REAL-Linear style).

Two pure pieces the ``retrieve`` step composes: ``class_quotas`` (how many items each class should
get to reach a balance target, in ``rebalance.domain.classes`` with the other class maths, and
importable from here) and ``retrieve_with_quotas`` (search a pool index per class and
assign every pool item to at most one class, best score first, until each quota is met).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numba
import numpy as np

from rebalance.domain.classes import Target, class_quotas  # noqa: F401  (this module's public API)

VOTE_CHUNK = 8192  # pool items voted on at once: bounds the dense (items × classes) vote matrix


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Retrieved items: class position, pool row, score and which query found it, best first per class."""

    classes: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    queries: np.ndarray
    # Per class: still short when the search stopped widening at its cap (``max_k``).
    capped: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)


SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
MAX_K = 2048
"""The widest search a class may ask for: FAISS's top-k limit on a GPU."""


def retrieve_with_quotas(
    search: SearchFn,
    queries: np.ndarray,
    query_classes: np.ndarray,
    quotas: np.ndarray,
    pool_size: int,
    *,
    excluded: Callable[[np.ndarray], np.ndarray] | None = None,
    agrees: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    oversample: float = 2.0,
    max_k: int = MAX_K,
) -> Assignment:
    """Fill every class's quota with the pool items closest to its queries, no item used twice.

    A class may have several queries (one per example for kNN retrieval): its score for an item
    is the best over its queries. Candidates of all classes are then taken in one global order
    (score descending; ties by class, then row), so an item wanted by two classes goes to the one
    it matches best, and a class stops at its quota. ``excluded(rows)`` flags pool rows that must
    never be taken (already in the dataset); ``agrees(rows, classes)`` flags the (item, class)
    candidates that may be taken, e.g. where the class wins a kNN vote of the item's labelled
    neighbours (``knn_vote_filter``). A class left short widens its search: only its own queries
    are searched again, k doubling, until it is full, the whole pool was ranked, or k reaches
    ``max_k`` (2,048: FAISS's top-k limit on a GPU; a class held short by ``min_score`` or the
    vote would otherwise drive queries × pool-size searches). ``Assignment.capped`` flags the
    classes that stopped short at that cap.

    Args:
        search: ``search(queries, k) -> (scores, rows)``, best first, rows −1 when fewer than k.
        queries: one vector per query (q × d).
        query_classes: the class position of each query.
        quotas: items wanted per class.
        pool_size: rows in the index.
    """
    quotas = np.asarray(quotas, dtype=np.int64)
    wanted = np.isin(query_classes, np.nonzero(quotas > 0)[0])
    queries, query_ids = queries[wanted], np.nonzero(wanted)[0]
    query_classes = np.asarray(query_classes)[wanted]
    empty = Assignment(*(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.float32, np.int64)))
    if len(queries) == 0 or pool_size == 0:
        return empty
    widest = min(pool_size, max_k)
    k = min(widest, max(1, int(np.ceil(quotas.max() * oversample))))
    # A wider round sees the earlier rounds' rows again: each row is checked once.
    excluded = _asked_once(excluded) if excluded is not None else None
    scores, rows = search(queries, k)
    while True:
        result = _assign(scores, rows, query_classes, query_ids, quotas, excluded, agrees)
        short = np.bincount(result.classes, minlength=len(quotas)) < quotas
        if not short.any() or k >= widest:
            capped = short if k >= max_k and k < pool_size else np.zeros(len(quotas), dtype=bool)
            return dataclasses.replace(result, capped=capped)
        k = min(widest, k * 2)
        # Only the short classes' queries look further; the others keep what they found.
        again = short[query_classes]
        wider_scores, wider_rows = search(queries[again], k)
        scores = _widened(scores, k, np.float32(-np.inf), again, wider_scores)
        rows = _widened(rows, k, -1, again, wider_rows)


def _widened(found: np.ndarray, k: int, fill, again: np.ndarray, wider: np.ndarray) -> np.ndarray:
    """``found`` padded to ``k`` columns with ``fill``, the rows flagged ``again`` replaced by ``wider``."""
    out = np.full((found.shape[0], k), fill, dtype=found.dtype)
    out[:, : found.shape[1]] = found
    out[again, : wider.shape[1]] = wider
    out[again, wider.shape[1] :] = fill
    return out


def _asked_once(flag: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``flag(rows)`` for unique ``rows``, asking ``flag`` only about rows it was not asked before."""
    known_rows, known = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)

    def remembered(rows: np.ndarray) -> np.ndarray:
        nonlocal known_rows, known
        new = np.setdiff1d(rows, known_rows)
        if len(new):
            known_rows = np.concatenate([known_rows, new])
            known = np.concatenate([known, np.asarray(flag(new), dtype=bool)])
            order = np.argsort(known_rows, kind="stable")
            known_rows, known = known_rows[order], known[order]
        return known[np.searchsorted(known_rows, rows)]

    return remembered


def _assign(
    scores: np.ndarray,
    rows: np.ndarray,
    query_classes: np.ndarray,
    query_ids: np.ndarray,
    quotas: np.ndarray,
    excluded: Callable[[np.ndarray], np.ndarray] | None,
    agrees: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Assignment:
    k = rows.shape[1]
    flat_class = np.repeat(query_classes, k)
    flat_query = np.repeat(query_ids, k)
    flat_rows, flat_scores = rows.reshape(-1), scores.reshape(-1)
    valid = flat_rows >= 0
    if excluded is not None and valid.any():
        unique_rows = np.unique(flat_rows[valid])
        banned = unique_rows[excluded(unique_rows)]
        valid &= ~np.isin(flat_rows, banned)
    if agrees is not None and valid.any():
        valid[valid] = agrees(flat_rows[valid], flat_class[valid])
    flat_class, flat_query = flat_class[valid], flat_query[valid]
    flat_rows, flat_scores = flat_rows[valid], flat_scores[valid]
    if len(np.unique(query_classes)) < len(query_classes):
        # Several queries per class (kNN): keep one candidate per (class, row), the best query's.
        order = np.lexsort((flat_query, -flat_scores, flat_rows, flat_class))
        flat_class, flat_query = flat_class[order], flat_query[order]
        flat_rows, flat_scores = flat_rows[order], flat_scores[order]
        first = np.ones(len(flat_rows), dtype=bool)
        first[1:] = (flat_class[1:] != flat_class[:-1]) | (flat_rows[1:] != flat_rows[:-1])
        flat_class, flat_query, flat_rows, flat_scores = (
            a[first] for a in (flat_class, flat_query, flat_rows, flat_scores)
        )
    # Best score first; equal scores keep the deterministic (class, row) order built above.
    order = np.argsort(-flat_scores, kind="stable")
    keep = _greedy_take(order, flat_rows, flat_class, quotas, int(flat_rows.max(initial=-1)) + 1)
    keep = keep[np.lexsort((-flat_scores[keep], flat_class[keep]))]
    return Assignment(
        flat_class[keep].astype(np.int64),
        flat_rows[keep].astype(np.int64),
        flat_scores[keep].astype(np.float32),
        flat_query[keep].astype(np.int64),
    )


@numba.njit(cache=True)
def _greedy_take(order, rows, classes, quotas, num_rows):  # pragma: no cover - compiled
    # Sequential by nature (each take changes what later candidates may take), so compiled rather
    # than vectorised: one pass over the candidates in score order.
    taken = np.zeros(num_rows, dtype=np.bool_)
    filled = np.zeros(len(quotas), dtype=np.int64)
    keep = np.empty(len(order), dtype=np.int64)
    count = 0
    for position in order:
        row, cls = rows[position], classes[position]
        if filled[cls] < quotas[cls] and not taken[row]:
            taken[row] = True
            filled[cls] += 1
            keep[count] = position
            count += 1
    return keep[:count]


def knn_vote_filter(
    labelled: np.ndarray,
    image_classes: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    k: int,
    vectors_of: Callable[[np.ndarray], np.ndarray],
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``agrees(rows, classes)`` for ``retrieve_with_quotas``: a pool item may join class c only when c
    has the most votes among the item's ``k`` nearest labelled images (cosine), each neighbour
    voting for every class it has (ties: every tied class may take it).

    A retrieval query finds what is near *one* class's examples; the vote also asks the classes
    that have no quota, so a coat that happens to lie near a shirt example is not taken as a
    shirt. It is the kNN pseudo-label agreement filter of semi-supervised learning, and it trades
    recall for precision: a tail class with few examples wins fewer votes, so keep ``k`` small.

    Args:
        labelled: unit vectors of the labelled images (n × d).
        image_classes: (image row, class position) pairs: the labels of ``labelled``.
        num_classes: C.
        k: neighbours that vote.
        vectors_of: pool rows -> their unit vectors.
    """
    import faiss

    membership = class_membership(image_classes, len(labelled), num_classes)
    nearest = faiss.IndexFlatIP(labelled.shape[1])
    nearest.add(np.ascontiguousarray(labelled, dtype=np.float32))
    k = min(k, len(labelled))
    # Each pool row is voted on once: a wider retrieval round reuses the earlier rounds' winners,
    # kept as sorted row · C + class keys (a row's tied winners are all kept).
    voted = np.zeros(0, dtype=np.int64)
    winners = np.zeros(0, dtype=np.int64)

    def agrees(pool_rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        nonlocal voted, winners
        fresh = np.setdiff1d(pool_rows, voted)
        if len(fresh):
            winners = np.union1d(winners, _winning_keys(fresh))
            voted = np.union1d(voted, fresh)
        return np.isin(np.asarray(pool_rows, dtype=np.int64) * num_classes + wanted, winners)

    def _winning_keys(unique: np.ndarray) -> np.ndarray:
        keys = []
        for start in range(0, len(unique), VOTE_CHUNK):
            chunk = unique[start : start + VOTE_CHUNK]
            _, neighbours = nearest.search(np.ascontiguousarray(vectors_of(chunk), dtype=np.float32), k)
            votes = vote_counts(neighbours, membership)
            items, classes = np.nonzero(votes == votes.max(axis=1, keepdims=True))
            keys.append(chunk[items].astype(np.int64) * num_classes + classes)
        return np.concatenate(keys)

    return agrees


def class_membership(labels: tuple[np.ndarray, np.ndarray], num_labelled: int, num_classes: int):
    """membership[r, c] = 1 where labelled row r has class c (sparse: rows × C)."""
    from scipy import sparse

    rows, classes = labels
    return sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, classes)), shape=(num_labelled, num_classes)
    )


def vote_counts(neighbours: np.ndarray, membership) -> np.ndarray:
    """votes[i, c] = how many of item i's neighbours (labelled rows, −1 for none) have class c."""
    from scipy import sparse

    valid = neighbours >= 0
    voters = sparse.csr_matrix(
        (np.ones(int(valid.sum()), dtype=np.float32), (np.nonzero(valid)[0], neighbours[valid])),
        shape=(len(neighbours), membership.shape[0]),
    )
    return (voters @ membership).toarray()
