"""How often retrieval labels right, estimated without pool labels, and the gate that acts on it.

Retrieval takes a pool item into class c when c wins the vote of its ``k`` nearest labelled images
and its score to c's queries is among c's best. Whether the item *is* a c nobody knows: a web pool
has no labels. The estimate works from three facts:

1. **Canaries.** Every labelled image (a seeded sample per class at scale) is put through the same
   rule as if it were hidden in the pool: it is left out of its own vote and out of the queries made
   from it (leave-one-out), and lands in class c when c wins its vote and its score to c's queries
   reaches the score of c's last retrieved item. Images known to lie *outside* the label set
   (``outside``: e.g. digits among clothes) go through the rule too. For each true class j this
   gives f_cj(s), the share of j's canaries that land in c above score s. Those shares are
   per class, so they do not depend on how many j's the pool holds.
2. **The pool's composition.** How many items of each class (and of none) the pool holds, N_j, is
   estimated by black-box shift estimation (Lipton et al., 2018): a prior-balanced kNN classifier
   (votes divided by class size) labels a seeded sample of the pool and the canaries; with C the
   canaries' confusion matrix and q the pool's predicted counts, N solves C N = q, N >= 0. An
   extra "far" outcome (the nearest labelled image below the 5th percentile of the canaries')
   makes the outside share identifiable when outside canaries are given.
3. **The count.** Class c took r items down to score s_r. The expected false positives among them
   are FP = Σ_{j != c} N_j f_cj(s_r), so the estimated precision is 1 − FP / r.

The interval (90 %) draws each f_cj from its Beta posterior and N from a bootstrap of the canaries
and the pool sample; it is widened to hold the point estimate. The Beta prior is worth one canary,
centred on the chance that an image of class j scores above s at all (a normal fitted to j's canary
scores for c, its spread doubled): a class whose few canaries saw no event but come close keeps a wide interval, one
that never comes close adds nothing. The gate keeps, per
class, the longest run of best-ranked items whose interval's lower end is at least ``min_precision``:
the point estimate at the top ranks rests on the few canaries that score that high.

Hand-written rather than taken from a library: no maintained package estimates the precision of a
kNN-vote retrieval under label shift; BBSE itself is a non-negative least-squares solve (scipy).
What it cannot see is said in ``docs/retrieval_precision.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from rebalance.methods.retrieval import class_membership, vote_counts

FAR_QUANTILE = 0.05  # canaries whose nearest labelled image is this unusual count as "far"
INTERVAL = (5.0, 95.0)  # percentiles of the 90 % interval
DRAWS = 400
# Cosine scores have a heavier upper tail than a normal fitted to a few canaries shows. Doubling
# the fitted spread took the 90 % interval's coverage on planted data (tests/test_precision.py,
# 6 seeds × 2 layouts × 2 classes) from 0.46 to 0.79 and kept the demo's at 5 of 5.
REACH_WIDENING = 2.0


@dataclasses.dataclass(frozen=True)
class Canaries:
    """Where each canary lands under the retrieval rule.

    ``true_class`` is the class position of a labelled canary, −1 for one outside the label set;
    ``wins[i, c]``: class c wins canary i's vote (ties: every tied class); ``scores[i, c]``: its
    retrieval score for class c (−inf where c has no query); ``predicted``: the prior-balanced kNN
    label, or C ("far") when its nearest labelled image is unusually far.
    """

    true_class: np.ndarray
    wins: np.ndarray
    scores: np.ndarray
    predicted: np.ndarray


@dataclasses.dataclass(frozen=True)
class ClassPrecision:
    """The estimate for one class: its retrieved items' estimated precision and 90 % interval, the
    point estimate and the interval's lower end over its ranked candidates (the gate reads the
    lower end), and the items kept."""

    estimate: float
    low: float
    high: float
    curve: np.ndarray
    low_curve: np.ndarray
    keep: int


def balanced_prediction(votes: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """The prior-balanced kNN label: the class with most votes per labelled image it has."""
    return np.argmax(votes / np.maximum(class_sizes, 1), axis=1)


def leave_one_out_neighbours(
    nearest_search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    vectors: np.ndarray,
    own_rows: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest labelled rows of each canary other than itself, and their similarities."""
    similarities, neighbours = nearest_search(vectors, k + 1)
    is_self = neighbours == own_rows[:, None]
    # Where the canary is not among its own k + 1 (exact duplicates tie), drop the farthest instead.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return (
        neighbours[keep].reshape(len(vectors), k),
        similarities[keep].reshape(len(vectors), k),
    )


def class_scores(
    vectors: np.ndarray,
    queries: np.ndarray,
    query_classes: np.ndarray,
    num_classes: int,
    *,
    own_rows: np.ndarray | None = None,
    query_rows: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """scores[i, c] = the best cosine of item i to class c's queries, as retrieval scores it.

    With ``own_rows`` and ``query_rows`` (the labelled row each query was made from, −1 for none),
    a canary is not scored against the query made from itself: it was left out of the queries.
    """
    scores = np.full((len(vectors), num_classes), -np.inf, dtype=np.float32)
    order = np.argsort(query_classes, kind="stable")
    queries, query_classes = queries[order], np.asarray(query_classes)[order]
    query_rows = None if query_rows is None else np.asarray(query_rows)[order]
    classes, starts = np.unique(query_classes, return_index=True)
    for begin in range(0, len(vectors), chunk):
        block = vectors[begin : begin + chunk] @ queries.T
        if own_rows is not None and query_rows is not None:
            block[own_rows[begin : begin + chunk, None] == query_rows[None, :]] = -np.inf
        if len(classes):
            scores[begin : begin + chunk, classes] = np.maximum.reduceat(block, starts, axis=1)
    return scores


def far_threshold(labelled_nearest: np.ndarray) -> float:
    """The similarity below which an item counts as far from every labelled image."""
    return float(np.quantile(labelled_nearest, FAR_QUANTILE)) if len(labelled_nearest) else -np.inf


def predicted_outcome(
    votes: np.ndarray, nearest: np.ndarray, class_sizes: np.ndarray, far: float
) -> np.ndarray:
    """The composition classifier's outcome per item: its balanced kNN label, or C when far."""
    return np.where(nearest < far, votes.shape[1], balanced_prediction(votes, class_sizes))


def pool_composition(
    canaries: Canaries,
    pool_predicted: np.ndarray,
    pool_size: int,
    num_classes: int,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """N: estimated pool items per class (and, last, outside the label set when outside canaries
    were given), by black-box shift estimation (Lipton et al., 2018).

    With ``rng``, the canaries and the pool sample are resampled first (one bootstrap draw).
    """
    from scipy.optimize import nnls

    true_class, predicted = canaries.true_class, canaries.predicted
    if rng is not None:
        true_class, predicted = _resample_within(true_class, predicted, rng)
        pool_predicted = pool_predicted[rng.integers(0, len(pool_predicted), len(pool_predicted))]
    columns = list(range(num_classes)) + ([-1] if (canaries.true_class < 0).any() else [])
    outcomes = num_classes + 1
    confusion = np.zeros((outcomes, len(columns)))
    for position, column in enumerate(columns):
        mine = predicted[true_class == column]
        if len(mine):
            confusion[:, position] = np.bincount(mine, minlength=outcomes) / len(mine)
        else:
            confusion[column if column >= 0 else num_classes, position] = 1.0  # no canary: assume it is seen
    observed = np.bincount(pool_predicted, minlength=outcomes) * (pool_size / max(len(pool_predicted), 1))
    counts, _ = nnls(confusion, observed.astype(np.float64))
    if len(columns) == num_classes:
        counts = np.append(counts, 0.0)
    return counts


def _resample_within(true_class: np.ndarray, predicted: np.ndarray, rng: np.random.Generator):
    picked = []
    for value in np.unique(true_class):
        members = np.nonzero(true_class == value)[0]
        picked.append(members[rng.integers(0, len(members), len(members))])
    order = np.concatenate(picked)
    return true_class[order], predicted[order]


def estimate_class(
    canaries: Canaries,
    target: int,
    ranked_scores: np.ndarray,
    composition: np.ndarray,
    composition_draws: np.ndarray,
    min_precision: float,
    rng: np.random.Generator,
) -> ClassPrecision:
    """The estimate for class ``target`` whose retrieved candidates scored ``ranked_scores`` (best
    first), given the pool composition (and bootstrap draws of it, one per row)."""
    num_classes = canaries.wins.shape[1]
    ranked_scores = np.asarray(ranked_scores, dtype=np.float32)
    taken = len(ranked_scores)
    if taken == 0:
        return ClassPrecision(float("nan"), float("nan"), float("nan"), np.zeros(0), np.zeros(0), 0)
    sources = [j for j in range(num_classes) if j != target] + (
        [-1] if (canaries.true_class < 0).any() else []
    )
    # expected[k] = Σ_j N_j · (share of j's canaries landing in the class above the k-th score).
    landing = canaries.wins[:, target] & np.isfinite(canaries.scores[:, target])
    expected = np.zeros(taken)
    events = np.zeros((len(sources), taken))
    sizes = np.zeros(len(sources))
    for position, source in enumerate(sources):
        mine = canaries.true_class == source
        sizes[position] = mine.sum()
        if not sizes[position]:
            continue
        above = np.sort(canaries.scores[mine & landing, target])
        # Canaries of `source` scoring at least each candidate's score.
        events[position] = len(above) - np.searchsorted(above, ranked_scores, side="left")
        expected += _count_of(composition, source) * events[position] / sizes[position]
    ranks = np.arange(1, taken + 1)
    curve = np.clip(1.0 - expected / ranks, 0.0, 1.0)
    # A source with a single canary borrows the spread of every canary's score for the class.
    every = canaries.scores[:, target]
    spread = float(np.std(every[np.isfinite(every)])) if np.isfinite(every).sum() > 1 else 1.0
    # Draws of the false positives above every rank at once (rates drawn per rank).
    false_draws = np.zeros((len(composition_draws), taken))
    for position, source in enumerate(sources):
        if not sizes[position]:
            continue
        # Prior weight of one canary, centred on how often a `source` image would score this high
        # at all: near classes keep a wide interval, classes that never come close add nothing.
        reach = _score_reach(canaries.scores[canaries.true_class == source, target], ranked_scores, spread)
        if not events[position].any() and reach.max() < 1e-6:
            continue
        hits = events[position]
        rates = rng.beta(
            hits + reach + 1e-9, sizes[position] - hits + 1.0 - reach + 1e-9, (len(false_draws), taken)
        )
        false_draws += composition_draws[:, [source if source >= 0 else num_classes]] * rates
    low_curve, high_curve = np.percentile(np.clip(1.0 - false_draws / ranks, 0.0, 1.0), INTERVAL, axis=0)
    low_curve, high_curve = np.minimum(low_curve, curve), np.maximum(high_curve, curve)
    # The gate asks for confidence: the interval's lower end must reach min_precision.
    meets = np.nonzero(low_curve >= min_precision)[0]
    keep = int(meets[-1]) + 1 if len(meets) else 0
    at = keep - 1 if keep else taken - 1  # the estimate of what is kept (or, kept none, was offered)
    return ClassPrecision(
        float(curve[at]), float(low_curve[at]), float(high_curve[at]), curve, low_curve, keep
    )


def _score_reach(scores: np.ndarray, thresholds: np.ndarray, fallback_spread: float) -> np.ndarray:
    """P(score >= each threshold) under a normal fitted to a source's canary scores for the class
    (one canary: its score, with ``fallback_spread``), the spread widened by ``REACH_WIDENING``."""
    from scipy.stats import norm

    scores = scores[np.isfinite(scores)]
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if len(scores) == 0:
        return np.ones_like(thresholds)
    spread = float(scores.std()) if len(scores) > 1 else fallback_spread
    return norm.sf(thresholds, loc=scores.mean(), scale=max(spread, 1e-3) * REACH_WIDENING)


def _count_of(composition: np.ndarray, source: int) -> float:
    return float(composition[source if source >= 0 else len(composition) - 1])


@dataclasses.dataclass(frozen=True)
class RetrievalPrecision:
    """Per class (all C): the quota, the candidates retrieval offered, how many the gate kept, the
    estimated precision of those kept (and its 90 % interval; NaN where nothing was offered), why a
    quota went unmet (None where it was met), and the estimated pool composition."""

    quotas: np.ndarray
    candidates: np.ndarray
    kept: np.ndarray
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    shortfall: list[str | None]
    composition: np.ndarray


def estimate_and_gate(
    labelled: np.ndarray,
    labels: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    queries: np.ndarray,
    query_classes: np.ndarray,
    query_rows: np.ndarray,
    candidates: tuple[np.ndarray, np.ndarray],
    quotas: np.ndarray,
    pool_vectors: Callable[[np.ndarray], np.ndarray],
    pool_size: int,
    *,
    vote_k: int | None,
    min_score: float | None,
    min_precision: float | None,
    outside: np.ndarray | None = None,
    canaries_per_class: int = 500,
    composition_sample: int = 20_000,
    seed: int = 0,
) -> RetrievalPrecision:
    """Estimate each class's retrieval precision from canaries and keep what meets ``min_precision``.

    Args:
        labelled: unit vectors of the labelled images (the voters and the query source).
        labels: (labelled row, class position) pairs.
        queries, query_classes: retrieval's query vectors and their classes.
        query_rows: the labelled row each query was made from, −1 where none (text, centroid).
        candidates: (class position, score) of every retrieved item, best first within a class.
        quotas: items each class asked for.
        pool_vectors: pool rows -> unit vectors, for the composition sample.
        vote_k: the vote's k, or None when retrieval takes no vote.
        min_score: the score below which retrieval takes nothing.
        min_precision: the gate; None keeps every candidate (the estimate is still made).
        outside: unit vectors of images known to lie outside the label set.
    """
    import faiss

    rng = np.random.default_rng(seed)
    rows, classes = labels
    class_sizes = np.bincount(classes, minlength=num_classes)
    nearest = faiss.IndexFlatIP(labelled.shape[1])
    nearest.add(np.ascontiguousarray(labelled, dtype=np.float32))
    k = min(vote_k or 10, max(len(labelled) - 1, 1))

    def search(vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        return nearest.search(np.ascontiguousarray(vectors, dtype=np.float32), min(count, len(labelled)))

    # Canaries: single-label images, at most `canaries_per_class` of each class (seeded).
    labels_per_row = np.bincount(rows, minlength=len(labelled))
    single = labels_per_row[rows] == 1
    canary_rows, canary_classes = [], []
    for cls in range(num_classes):
        members = rows[single & (classes == cls)]
        if len(members) > canaries_per_class:
            members = np.sort(rng.choice(members, canaries_per_class, replace=False))
        canary_rows.append(members)
        canary_classes.append(np.full(len(members), cls))
    canary_rows, canary_classes = np.concatenate(canary_rows), np.concatenate(canary_classes)
    neighbours, similarities = leave_one_out_neighbours(search, labelled[canary_rows], canary_rows, k)
    membership = class_membership(labels, len(labelled), num_classes)
    votes = vote_counts(neighbours, membership)
    # Only the classes that retrieved need scores: the rest would cost canaries × all queries.
    scored = np.isin(query_classes, np.nonzero(np.asarray(quotas) > 0)[0])
    queries, query_classes, query_rows = (
        queries[scored],
        np.asarray(query_classes)[scored],
        query_rows[scored],
    )
    scores = class_scores(
        labelled[canary_rows],
        queries,
        query_classes,
        num_classes,
        own_rows=canary_rows,
        query_rows=query_rows,
    )
    far = far_threshold(similarities[:, 0])
    parts = [(canary_classes, votes, scores, similarities[:, 0])]
    if outside is not None and len(outside):
        outside_similarities, outside_neighbours = search(outside, k)
        parts.append(
            (
                np.full(len(outside), -1),
                vote_counts(outside_neighbours, membership),
                class_scores(outside, queries, query_classes, num_classes),
                outside_similarities[:, 0],
            )
        )
    true_class, votes, scores, top = (np.concatenate(part) for part in zip(*parts, strict=True))
    if min_score is not None:
        scores = np.where(scores >= min_score, scores, -np.inf)
    wins = (
        votes == votes.max(axis=1, keepdims=True) if vote_k is not None else np.ones_like(votes, dtype=bool)
    )
    canaries = Canaries(true_class, wins, scores, predicted_outcome(votes, top, class_sizes, far))

    sample = np.sort(rng.choice(pool_size, min(pool_size, composition_sample), replace=False))
    pool_similarities, pool_neighbours = search(pool_vectors(sample), k)
    pool_predicted = predicted_outcome(
        vote_counts(pool_neighbours, membership),
        pool_similarities[:, 0],
        class_sizes,
        far,
    )
    composition = pool_composition(canaries, pool_predicted, pool_size, num_classes)
    composition_draws = np.stack(
        [pool_composition(canaries, pool_predicted, pool_size, num_classes, rng=rng) for _ in range(DRAWS)]
    )

    found_classes, found_scores = candidates
    offered = np.bincount(found_classes, minlength=num_classes)
    kept = offered.copy()
    estimate, low, high = (np.full(num_classes, np.nan) for _ in range(3))
    shortfall: list[str | None] = [None] * num_classes
    for cls in np.nonzero(offered)[0]:
        result = estimate_class(
            canaries,
            int(cls),
            found_scores[found_classes == cls],
            composition,
            composition_draws,
            0.0 if min_precision is None else min_precision,
            rng,
        )
        kept[cls] = result.keep
        estimate[cls], low[cls], high[cls] = result.estimate, result.low, result.high
        if result.keep < offered[cls]:
            shortfall[cls] = (
                f"precision gate: kept {result.keep} of {offered[cls]} candidates; the next would bring the "
                f"lower end of its estimated precision to {result.low_curve[result.keep]:.2f} < min_precision "
                f"{min_precision:.2f}"
            )
    for cls in np.nonzero((offered < quotas) & (kept == offered))[0]:
        shortfall[cls] = (
            f"the pool offered {offered[cls]} of {quotas[cls]} wanted: no more items pass "
            + ("the vote" if vote_k is not None else "the search")
            + (" and min_score" if min_score is not None else "")
        )
    return RetrievalPrecision(
        np.asarray(quotas, dtype=np.int64), offered, kept, estimate, low, high, shortfall, composition
    )
