from __future__ import annotations

import numpy as np

from rebalance.methods.index import build_index, search
from rebalance.methods.retrieval import class_quotas, knn_vote_filter, retrieve_with_quotas


def test_quotas_raise_classes_to_the_target_with_a_cap() -> None:
    counts = np.array([100, 40, 9, 0])
    # median of (0, 9, 40, 100) = 24.5 -> 25
    assert class_quotas(counts, "median").tolist() == [0, 0, 16, 25]
    assert class_quotas(counts, "max", max_per_class=30).tolist() == [0, 30, 30, 30]
    assert class_quotas(counts, "mean").tolist() == [0, 0, 29, 38]  # mean 37.25 -> 38
    assert class_quotas(counts, 50, eligible=np.array([True, True, False, True])).tolist() == [0, 10, 0, 50]


def planted_pool(seed: int = 0):
    """Three class directions; the pool holds 6 near copies of each class plus 200 unrelated items."""
    rng = np.random.default_rng(seed)
    directions = np.eye(16, dtype=np.float32)[:3]
    planted = np.repeat(directions, 6, axis=0) + rng.normal(scale=0.05, size=(18, 16)).astype(np.float32)
    noise = rng.normal(size=(200, 16)).astype(np.float32)
    noise[:, :3] = 0  # orthogonal to every class direction
    pool = np.concatenate([noise[:100], planted, noise[100:]])
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    planted_rows = {c: set(range(100 + 6 * c, 106 + 6 * c)) for c in range(3)}
    return directions, pool, planted_rows


def run(queries, query_classes, quotas, pool, **kwargs):
    index = build_index(pool, "Flat")
    return retrieve_with_quotas(
        lambda q, k: search(index, q, k), queries, query_classes, np.array(quotas), len(pool), **kwargs
    )


def test_planted_examples_come_first_and_quotas_are_exact() -> None:
    directions, pool, planted_rows = planted_pool()
    found = run(directions, np.arange(3), [4, 6, 9], pool)
    per_class = {c: found.rows[found.classes == c] for c in range(3)}
    assert [len(per_class[c]) for c in range(3)] == [4, 6, 9]  # exact quotas
    assert set(per_class[0]) <= planted_rows[0] and set(per_class[1]) == planted_rows[1]
    assert set(per_class[2][:6]) == planted_rows[2]  # the 6 planted first, then 3 filler items
    assert len(set(found.rows.tolist())) == len(found.rows)  # no item twice
    for c in range(3):
        assert np.all(np.diff(found.scores[found.classes == c]) <= 0)


def test_an_item_wanted_by_two_classes_goes_to_its_best_match() -> None:
    pool = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    queries = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    # Row 1 scores 0.8 for class 0 and 0.6 for class 1: class 0 takes it, class 1 takes row 2 and then row 3.
    found = run(queries, np.array([0, 1]), [2, 2], pool)
    assert dict(zip(found.rows.tolist(), found.classes.tolist(), strict=True)) == {0: 0, 1: 0, 2: 1, 3: 1}


def test_excluded_rows_are_never_taken_and_short_classes_search_deeper() -> None:
    directions, pool, planted_rows = planted_pool()
    banned = planted_rows[0]
    found = run(
        directions[:1],
        np.array([0]),
        [10],
        pool,
        excluded=lambda rows: np.isin(rows, list(banned)),
        oversample=1.0,
    )
    assert len(found) == 10 and not set(found.rows.tolist()) & banned


def test_knn_queries_score_an_item_by_its_best_example() -> None:
    directions, pool, planted_rows = planted_pool()
    examples = np.concatenate([directions[:1], directions[:1] * 0.0 + pool[101:102]])
    found = run(examples, np.array([0, 0]), [6], pool)
    assert set(found.rows.tolist()) == planted_rows[0] and set(found.queries.tolist()) <= {0, 1}


def test_nothing_to_fill_gives_an_empty_assignment() -> None:
    directions, pool, _ = planted_pool()
    assert len(run(directions, np.arange(3), [0, 0, 0], pool)) == 0


def _unit(angles_degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(angles_degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_knn_vote_by_hand() -> None:
    # Labelled: class 0 at 0°, 10°, 20°; class 1 at 80°, 90°; class 2 (multi-label image) at 45°.
    labelled = _unit([0, 10, 20, 80, 90, 45])
    pairs = (np.array([0, 1, 2, 3, 4, 5, 5]), np.array([0, 0, 0, 1, 1, 1, 2]))
    pool = _unit([5, 85, 50, 40, 30])
    agrees = knn_vote_filter(labelled, pairs, 3, 3, lambda rows: pool[rows])
    # Item 0 (5°): neighbours 0°, 10°, 20° -> class 0 wins 3 votes to 0.
    # Item 1 (85°): 80°, 90°, 45° -> class 1 has 3 votes (the 45° image votes for 1 and 2).
    # Item 2 (50°): 45°, 80°, 20° -> class 1: 2 (45°, 80°), class 0: 1, class 2: 1.
    # Item 3 (40°): 45°, 20°, 10° -> class 0: 2, class 1: 1, class 2: 1.
    rows = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    classes = np.array([0, 1, 1, 2, 1, 2, 0, 2])
    assert agrees(rows, classes).tolist() == [True, False, True, False, True, False, True, False]
    # A tie lets each tied class take the item: k = 2 at 30° has 20° (class 0) and 45° (classes 1, 2).
    tied = knn_vote_filter(labelled, pairs, 3, 2, lambda rows: pool[rows])
    assert tied(np.array([4, 4, 4, 0]), np.array([0, 1, 2, 1])).tolist() == [True, True, True, False]


def test_the_vote_keeps_an_item_out_of_a_class_whose_query_it_is_near() -> None:
    # Class 0's only example is at 30°; class 1 (no quota) owns the region around 50°. The pool item
    # at 45° is nearer to class 0's query than the others, but its nearest labelled image is class 1's.
    labelled = _unit([30, 48, 50, 52])
    pairs = (np.arange(4), np.array([0, 1, 1, 1]))
    pool = _unit([45, 10, 0])
    agrees = knn_vote_filter(labelled, pairs, 2, 1, lambda rows: pool[rows])
    plain = run(labelled[:1], np.array([0]), [2], pool)
    voted = run(labelled[:1], np.array([0]), [2], pool, agrees=agrees)
    assert sorted(plain.rows.tolist()) == [0, 1]
    assert sorted(voted.rows.tolist()) == [1, 2]


def test_a_wider_round_reuses_the_earlier_rounds_checks_and_votes() -> None:
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(600, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    labelled = pool[:40] + rng.normal(scale=0.01, size=(40, 8)).astype(np.float32)
    labelled /= np.linalg.norm(labelled, axis=1, keepdims=True)
    pairs = (np.arange(40), np.arange(40) % 2)
    asked, voted = [], []

    def excluded(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.copy())
        return rows % 10 < 6  # most of the pool is off limits: the search has to widen

    def vectors_of(rows: np.ndarray) -> np.ndarray:
        voted.append(rows.copy())
        return pool[rows]

    queries, classes, quotas = labelled[:2], np.array([0, 1]), [60, 60]
    widened = run(
        queries,
        classes,
        quotas,
        pool,
        excluded=excluded,
        agrees=knn_vote_filter(labelled, pairs, 2, 3, vectors_of),
    )
    assert len(asked) > 1 and len(voted) > 1  # several rounds
    for calls in (asked, voted):
        every = np.concatenate(calls)
        assert len(every) == len(np.unique(every))  # each row checked and voted on once
    # The same assignment as one round over the whole pool, where nothing can be reused.
    single = run(
        queries,
        classes,
        quotas,
        pool,
        excluded=lambda rows: rows % 10 < 6,
        agrees=knn_vote_filter(labelled, pairs, 2, 3, lambda rows: pool[rows]),
        oversample=1000,
    )
    assert (
        widened.rows.tolist() == single.rows.tolist() and widened.classes.tolist() == single.classes.tolist()
    )


def test_widening_searches_only_the_short_classes_and_stops_at_its_cap() -> None:
    from rebalance.methods.retrieval import retrieve_with_quotas

    rng = np.random.default_rng(0)
    pool = rng.normal(size=(400, 8)).astype(np.float32)
    queries = pool[:2] + 0.01
    asked: list[tuple[int, int]] = []

    def search(vectors: np.ndarray, k: int):
        asked.append((len(vectors), k))
        scores = vectors @ pool.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, 1), rows

    # Class 1 can never be filled: its votes reject every candidate. Class 0 fills at once.
    found = retrieve_with_quotas(
        search,
        queries,
        np.array([0, 1]),
        np.array([3, 3]),
        len(pool),
        agrees=lambda rows, classes: classes == 0,
        max_k=32,
    )
    assert np.bincount(found.classes, minlength=2).tolist() == [3, 0]
    assert asked == [(2, 6), (1, 12), (1, 24), (1, 32)]  # only class 1's query widens, to the cap
    assert found.capped.tolist() == [False, True]
    # With the whole pool within the cap, a short class is not "capped": the pool ran out.
    whole = retrieve_with_quotas(
        search, queries, np.array([0, 1]), np.array([3, 3]), 20, agrees=lambda r, c: c == 0, max_k=32
    )
    assert whole.capped.tolist() == [False, False]
