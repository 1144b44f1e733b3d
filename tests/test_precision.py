"""The retrieval precision estimate: its pieces on hand-computed values, then on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from rebalance.methods.precision import (
    Canaries,
    class_scores,
    estimate_and_gate,
    estimate_class,
    leave_one_out_neighbours,
    pool_composition,
)
from rebalance.methods.retrieval import class_membership, vote_counts


def test_class_scores_take_each_class_best_query_and_skip_the_canary_own_query() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    queries = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    # class 1 has two queries (made from labelled rows 0 and 5), class 0 one (row 1), class 2 none.
    scores = class_scores(
        vectors, queries, np.array([1, 1, 0]), 3, own_rows=np.array([0, 1]), query_rows=np.array([0, 5, 1])
    )
    # row 0: its own query (1, 0) is skipped -> class 1 scores 0.6 from (0.6, 0.8); class 0: 0.
    # row 1: class 1 = max(0, 0.8) = 0.8; class 0's only query is its own -> -inf.
    assert scores.tolist() == [[0.0, pytest.approx(0.6), -np.inf], [-np.inf, pytest.approx(0.8), -np.inf]]


def test_leave_one_out_drops_the_canary_itself_or_else_the_farthest() -> None:
    def search(vectors, count):
        similarities = np.array([[1.0, 0.9, 0.8], [1.0, 1.0, 0.7]], dtype=np.float32)
        return similarities[:, :count], np.array([[4, 2, 3], [6, 7, 1]])[:, :count]

    neighbours, similarities = leave_one_out_neighbours(search, np.zeros((2, 2)), np.array([4, 5]), 2)
    assert neighbours.tolist() == [[2, 3], [6, 7]]  # row 5's exact duplicates hide it: drop the farthest
    assert similarities.tolist() == [pytest.approx([0.9, 0.8]), pytest.approx([1.0, 1.0])]


def test_votes_count_every_class_of_each_neighbour() -> None:
    labels = (np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]))  # row 1 has both classes
    votes = vote_counts(np.array([[0, 1], [2, -1]]), class_membership(labels, 3, 2))
    assert votes.tolist() == [[2.0, 1.0], [0.0, 1.0]]


def test_pool_composition_inverts_the_canaries_confusion() -> None:
    # Canaries: class 0 predicted 0 eight times in ten, class 1 predicted 1 seven times in ten.
    true_class = np.repeat([0, 1], 10)
    predicted = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 7)
    canaries = Canaries(true_class, np.zeros((20, 2), bool), np.zeros((20, 2)), predicted)
    # A pool of 100 zeros and 50 ones is predicted 0 for 0.8·100 + 0.3·50 = 95 items, 1 for 55.
    pool_predicted = np.array([0] * 95 + [1] * 55)
    composition = pool_composition(canaries, pool_predicted, 150, 2)
    assert composition == pytest.approx([100.0, 50.0, 0.0])
    # A sample of a fifth (19 predicted 0, 11 predicted 1) stands for the whole pool.
    sample = np.array([0] * 19 + [1] * 11)
    assert pool_composition(canaries, sample, 150, 2) == pytest.approx([100.0, 50.0, 0.0])


def test_the_estimate_counts_expected_false_positives_above_each_rank() -> None:
    # Class 1's ten canaries: two land in class 0, scoring 0.9 and 0.5; class 0's own canaries never
    # count as false positives. The pool holds 10 items of class 1.
    true_class = np.array([1] * 10 + [0] * 4)
    wins = np.zeros((14, 2), bool)
    wins[[0, 1], 0] = True
    wins[10:, 0] = True
    scores = np.full((14, 2), 0.1, dtype=np.float32)
    scores[0, 0], scores[1, 0] = 0.9, 0.5
    canaries = Canaries(true_class, wins, scores, np.zeros(14, int))
    composition = np.array([40.0, 10.0, 0.0])
    draws = np.tile(composition, (50, 1))
    ranked = np.array([0.95, 0.85, 0.6, 0.4])
    result = estimate_class(canaries, 0, ranked, composition, draws, 0.0, np.random.default_rng(0))
    # FP at each rank: 10 · (canaries of class 1 at or above the score) / 10 = 0, 1, 1, 2.
    assert result.curve.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert result.keep == 4 and result.estimate == pytest.approx(0.5)
    assert result.low <= result.estimate <= result.high
    assert np.all(result.low_curve <= result.curve)
    # The gate reads the interval's lower end: it keeps the longest best-first run whose lower end
    # reaches min_precision, and reports the estimate of what it kept.
    gate = 0.9 * result.low_curve[0]
    gated = estimate_class(canaries, 0, ranked, composition, draws, gate, np.random.default_rng(0))
    assert gated.keep == int(np.nonzero(gated.low_curve >= gate)[0][-1]) + 1
    assert gated.estimate == pytest.approx(gated.curve[gated.keep - 1])


def planted(seed: int = 0, confusable: float = 0.0):
    """Four classes on the axes of 8 dimensions, a long-tailed labelled set and a balanced pool.

    ``confusable`` moves class 3 (the tail) towards class 2 (the next rarest), so that pool items of each
    are found for the other.
    """
    rng = np.random.default_rng(seed)
    centres = np.eye(8, dtype=np.float32)[:4]
    centres[3] = (1 - confusable) * centres[3] + confusable * centres[2]

    def draw(counts):
        classes = np.repeat(np.arange(4), counts)
        vectors = centres[classes] + rng.normal(scale=0.35, size=(len(classes), 8)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), classes

    labelled, labelled_classes = draw([400, 150, 60, 25])
    pool, pool_classes = draw([300, 300, 300, 300])
    return labelled, labelled_classes, pool, pool_classes


def retrieve_planted(labelled, labelled_classes, pool, quotas, min_precision, outside=None):
    """The retrieval rule by hand: vote of 10 nearest labelled images, best score per class."""
    from rebalance.methods.retrieval import knn_vote_filter, retrieve_with_quotas

    rows = np.arange(len(labelled))
    agrees = knn_vote_filter(labelled, (rows, labelled_classes), 4, 10, lambda r: pool[r])

    def search(vectors, k):
        similarities = vectors @ pool.T
        order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(similarities, order, axis=1), order

    found = retrieve_with_quotas(search, labelled, labelled_classes, quotas, len(pool), agrees=agrees)
    gate = estimate_and_gate(
        labelled,
        (rows, labelled_classes),
        4,
        labelled,
        labelled_classes,
        rows,
        (found.classes, found.scores),
        quotas,
        lambda r: pool[r],
        len(pool),
        vote_k=10,
        min_score=None,
        min_precision=min_precision,
        outside=outside,
    )
    return found, gate


def test_the_estimate_tracks_the_true_precision_on_planted_data() -> None:
    labelled, labelled_classes, pool, pool_classes = planted()
    quotas = np.array([0, 0, 100, 100])
    found, gate = retrieve_planted(labelled, labelled_classes, pool, quotas, None)
    for cls in (2, 3):
        taken = found.rows[found.classes == cls]
        truth = float(np.mean(pool_classes[taken] == cls))
        assert abs(gate.estimate[cls] - truth) <= 0.05, (cls, gate.estimate[cls], truth)
    # The pool is balanced: 300 of each class, found without its labels.
    assert gate.composition[:4] == pytest.approx([300] * 4, rel=0.2)
    assert gate.composition[4] == 0.0


def test_the_interval_holds_the_true_precision_about_as_often_as_it_says() -> None:
    # 6 seeds × separable and confusable layouts × the two retrieving classes. Few canaries of a
    # confusable tail class make the point estimate noisy (an error of 0.1 to 0.2 there); the
    # 90 % interval holds the truth in 19 of these 24 cases.
    inside, errors = [], []
    for confusable in (0.0, 0.6):
        for seed in range(6):
            labelled, labelled_classes, pool, pool_classes = planted(seed, confusable)
            found, gate = retrieve_planted(labelled, labelled_classes, pool, np.array([0, 0, 100, 100]), None)
            for cls in (2, 3):
                truth = float(np.mean(pool_classes[found.rows[found.classes == cls]] == cls))
                inside.append(gate.low[cls] <= truth <= gate.high[cls])
                errors.append(abs(gate.estimate[cls] - truth))
    assert np.mean(inside) >= 0.75
    assert np.mean(errors) <= 0.08


def test_the_gate_stops_a_confusable_class_and_says_why() -> None:
    labelled, labelled_classes, pool, pool_classes = planted(confusable=0.75)
    found, gate = retrieve_planted(labelled, labelled_classes, pool, np.array([0, 0, 100, 100]), 0.9)
    assert gate.kept[3] < gate.candidates[3]
    assert gate.shortfall[3].startswith("precision gate: kept")
    assert gate.low[3] >= 0.9 or gate.kept[3] == 0
    # Taking more would have brought the interval's lower end below the gate.
    _, more = gate.shortfall[3].rsplit("precision to ", 1)
    assert float(more.split(" ")[0]) < 0.9
    # Without a gate every candidate stays, and an unmet quota names the pool as the reason.
    _, open_gate = retrieve_planted(labelled, labelled_classes, pool, np.array([0, 0, 100, 100]), None)
    assert open_gate.kept[3] == open_gate.candidates[3] < 100
    assert open_gate.shortfall[3].startswith(f"the pool offered {open_gate.candidates[3]} of 100")


def test_outside_canaries_reveal_a_pool_of_items_of_no_class() -> None:
    labelled, labelled_classes, pool, pool_classes = planted()
    rng = np.random.default_rng(1)

    # Items of no class, near class 3's axis but off it: the pool holds 400, the user has 100 like them.
    def strangers(count):
        vectors = np.eye(8, dtype=np.float32)[3] * 0.5 + np.eye(8, dtype=np.float32)[5]
        vectors = vectors + rng.normal(scale=0.35, size=(count, 8)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    pool = np.concatenate([pool, strangers(400)])
    pool_classes = np.concatenate([pool_classes, np.full(400, -1)])
    quotas = np.array([0, 0, 0, 100])
    blind_found, blind = retrieve_planted(labelled, labelled_classes, pool, quotas, None)
    found, seeing = retrieve_planted(labelled, labelled_classes, pool, quotas, None, outside=strangers(100))
    truth = float(np.mean(pool_classes[found.rows[found.classes == 3]] == 3))
    assert truth < 0.9
    assert seeing.composition[4] > 200  # it sees the strangers
    assert abs(seeing.estimate[3] - truth) < abs(blind.estimate[3] - truth)
