from __future__ import annotations

import numpy as np
import pytest

from rebalance.errors import DataError
from rebalance.methods.feature_synthesis import calibrated_gaussian, calibrated_moments, smote


def two_classes(seed: int = 0, tail: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (200, 8)), rng.normal(5, 0.5, (tail, 8))]).astype(np.float32)
    return x, np.array([0] * 200 + [1] * tail)


def test_smote_by_hand_on_a_line() -> None:
    # Class 0 at 0, 1 and 3 with k = 1: nearest neighbours 0 -> 1, 1 -> 0, 3 -> 1.
    x = np.array([[0.0], [1.0], [3.0], [9.0]], dtype=np.float32)
    made = smote(x, np.array([0, 0, 0, 1]), np.array([50, 0]), k=1, seed=3)
    nearest = {0: 1, 1: 0, 2: 1}
    assert len(made) == 50 and set(made.labels.tolist()) == {0}
    assert all(nearest[p] == n for p, n in zip(made.parents.tolist(), made.neighbors.tolist(), strict=True))
    expected = x[made.parents, 0] + made.lambdas * (x[made.neighbors, 0] - x[made.parents, 0])
    np.testing.assert_allclose(made.vectors[:, 0], expected, rtol=1e-6)
    assert np.all((made.lambdas >= 0) & (made.lambdas < 1))


def test_every_smote_sample_lies_between_a_sample_and_one_of_its_k_nearest_classmates() -> None:
    x, labels = two_classes()
    made = smote(x, labels, np.array([0, 40]), k=5, seed=0)
    assert np.bincount(made.labels, minlength=2).tolist() == [0, 40]
    assert np.all(labels[made.parents] == 1) and np.all(labels[made.neighbors] == 1)
    assert np.all(made.parents != made.neighbors)
    tail = np.flatnonzero(labels == 1)
    for parent, neighbour in zip(made.parents, made.neighbors, strict=True):
        distances = np.linalg.norm(x[tail] - x[parent], axis=1)
        assert neighbour in tail[np.argsort(distances)[1:6]]
    segment = x[made.parents] + made.lambdas[:, None] * (x[made.neighbors] - x[made.parents])
    np.testing.assert_allclose(made.vectors, segment, atol=1e-5)


def test_smote_is_seeded_and_skips_a_class_with_one_sample() -> None:
    x, labels = two_classes()
    first, again = smote(x, labels, np.array([0, 30]), seed=1), smote(x, labels, np.array([0, 30]), seed=1)
    assert np.array_equal(first.vectors, again.vectors)
    assert not np.array_equal(first.vectors, smote(x, labels, np.array([0, 30]), seed=2).vectors)
    x1, labels1 = two_classes(tail=1)
    made = smote(x1, labels1, np.array([0, 30]))
    assert len(made) == 0 and "1 sample(s)" in made.skipped[1]


def test_smote_matches_imbalanced_learn_in_counts_and_in_distribution() -> None:
    from imblearn.over_sampling import SMOTE

    x, labels = two_classes(tail=30)
    ours = smote(x, labels, np.array([0, 4000]), k=5, seed=0)
    x_res, y_res = SMOTE(sampling_strategy={1: 4030}, k_neighbors=5, random_state=0).fit_resample(x, labels)
    theirs = x_res[len(x) :]
    assert (
        np.bincount(y_res[len(x) :], minlength=2).tolist() == np.bincount(ours.labels, minlength=2).tolist()
    )
    # Same sampling distribution: the synthetic means and spreads agree to sampling error.
    np.testing.assert_allclose(ours.vectors.mean(axis=0), theirs.mean(axis=0), atol=0.03)
    np.testing.assert_allclose(ours.vectors.std(axis=0), theirs.std(axis=0), rtol=0.06)


def test_calibrated_moments_by_hand() -> None:
    identity = np.eye(2)
    stats = {
        0: (np.array([2.0, 0.0]), 1.0 * identity),
        1: (np.array([0.0, 4.0]), 3.0 * identity),
        2: (np.array([10.0, 10.0]), 9.0 * identity),
        3: (np.array([0.0, 0.0]), None),
    }
    mean, cov = calibrated_moments(stats, 3, head_classes=[0, 1, 2], borrow=2, alpha=0.5, dim=2)
    # The two nearest head means are (2, 0) at distance 2 and (0, 4) at distance 4.
    np.testing.assert_allclose(mean, [2 / 3, 4 / 3])
    np.testing.assert_allclose(cov, (1.0 + 3.0) / 2 * identity + 0.5 * identity)
    head_mean, head_cov = calibrated_moments(stats, 0, head_classes=[0, 1, 2], borrow=2, alpha=0.5, dim=2)
    # A head class keeps its own moments, with the ridge α·I added to its covariance.
    np.testing.assert_allclose(head_mean, [2, 0])
    np.testing.assert_allclose(head_cov, 1.5 * identity)


def test_gaussian_samples_converge_to_the_calibrated_statistics() -> None:
    rng = np.random.default_rng(0)
    heads = [
        rng.multivariate_normal(m, c, 3000)
        for m, c in (([3, 0, 0], np.diag([1, 2, 0.5])), ([0, 3, 0], np.diag([0.5, 1, 1])))
    ]
    tail = rng.normal(0, 0.1, (4, 3))
    x = np.concatenate([*heads, tail]).astype(np.float32)
    labels = np.array([0] * 3000 + [1] * 3000 + [2] * 4)
    made = calibrated_gaussian(
        x,
        labels,
        np.array([0, 0, 200_000]),
        head=np.array([True, True, False]),
        lof_neighbors=None,
        alpha=0.1,
    )
    moments = {
        c: (
            x[labels == c].astype(np.float64).mean(axis=0),
            np.cov(x[labels == c].astype(np.float64), rowvar=False),
        )
        for c in range(3)
    }
    mean, cov = calibrated_moments(moments, 2, [0, 1], borrow=2, alpha=0.1, dim=3)
    np.testing.assert_allclose(made.vectors.mean(axis=0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(made.vectors, rowvar=False), cov, atol=0.02)
    assert np.all(made.parents == -1) and np.isnan(made.lambdas).all()


def test_lof_drops_an_outlier_before_the_statistics() -> None:
    rng = np.random.default_rng(1)
    inliers = rng.normal(0, 1, (60, 2))
    x = np.concatenate([inliers, [[40.0, 40.0]]]).astype(np.float32)
    labels = np.zeros(61, dtype=int)
    made = calibrated_gaussian(
        x, labels, np.array([50_000]), head=np.array([True]), lof_neighbors=20, alpha=0.0
    )
    # The outlier would move the mean by ~0.65 along each axis; LOF may also drop a few edge inliers.
    drawn = made.vectors.mean(axis=0)
    assert np.all(np.abs(drawn - inliers.mean(axis=0)) < 0.15)
    assert np.all(np.abs(drawn - x.mean(axis=0)) > 0.5)


def test_nan_features_are_rejected_with_their_rows() -> None:
    x, labels = two_classes()
    x[205, 3] = np.nan
    with pytest.raises(DataError, match=r"NaN or infinite \(first rows: \[205\]\)"):
        smote(x, labels, np.array([0, 5]))


def test_the_torch_neighbour_search_gives_the_same_samples_as_faiss() -> None:
    x, labels = two_classes(tail=40)
    quotas = np.array([30, 60])
    by_faiss = smote(x, labels, quotas, seed=5, backend="faiss")
    by_torch = smote(x, labels, quotas, seed=5, backend="torch", device="cpu")
    assert np.array_equal(by_faiss.neighbors, by_torch.neighbors)
    np.testing.assert_allclose(by_faiss.vectors, by_torch.vectors, atol=1e-6)
