from __future__ import annotations

import numpy as np
import pytest

from rebalance.methods.dedup import semdedup


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    originals = rng.standard_normal((1000, 32)).astype(np.float32)
    copies = originals[:40] + 1e-3 * rng.standard_normal((40, 32)).astype(np.float32)
    return np.vstack([originals, copies]), np.r_[np.arange(40), np.arange(40)]


def test_planted_duplicates_are_removed_once_and_protected_ones_kept() -> None:
    vectors, _ = planted()
    protected = np.zeros(len(vectors), dtype=bool)
    protected[30:40] = protected[1030:1040] = True  # these ten pairs belong to tail classes
    result = semdedup(vectors, epsilon=0.01, n_clusters=8, seed=0, protected=protected)
    removed = set(np.flatnonzero(~result.keep).tolist())
    assert len(removed) == 30
    for pair in range(30):  # exactly one copy of each unprotected pair goes
        assert (pair in removed) != (1000 + pair in removed)
        gone = pair if pair in removed else 1000 + pair
        assert result.duplicate_of[gone] == (1000 + pair if gone == pair else pair)
        assert result.similarity[gone] > 0.99
    assert not removed & set(range(30, 40)) | removed & set(range(1030, 1040))


def test_keeps_the_copy_farthest_from_its_centroid_and_respects_groups() -> None:
    vectors, _ = planted()
    groups = np.zeros(len(vectors), dtype=np.int64)
    groups[1000:] = 1  # copies labelled with another class: never duplicates of the originals
    assert semdedup(vectors, epsilon=0.01, n_clusters=8, seed=0, groups=groups).keep.all()
    # One cluster trained on every point: its centroid is the normalised mean.
    result = semdedup(vectors, epsilon=0.01, n_clusters=1, seed=0, sample_per_cluster=len(vectors))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    centroid = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    for pair in range(40):
        kept = pair if result.keep[pair] else 1000 + pair
        other = 1000 + pair if kept == pair else pair
        assert unit[kept] @ centroid <= unit[other] @ centroid + 1e-6


def test_chains_compare_with_kept_items_only() -> None:
    # a ~ b and b ~ c but a !~ c (at this epsilon): b is removed, c is kept.
    angle = np.deg2rad([0.0, 10.0, 20.0])
    vectors = np.c_[np.cos(angle), np.sin(angle)].astype(np.float32)
    threshold_cos = np.cos(np.deg2rad(15.0))
    result = semdedup(vectors, epsilon=1 - threshold_cos, n_clusters=1, seed=0)
    assert result.keep.sum() == 2 and not result.keep[1]


def test_same_seed_same_result_and_nan_rejected() -> None:
    vectors, _ = planted(1)
    first = semdedup(vectors, epsilon=0.05, n_clusters=10, seed=3)
    again = semdedup(vectors, epsilon=0.05, n_clusters=10, seed=3)
    assert np.array_equal(first.keep, again.keep) and np.array_equal(first.clusters, again.clusters)
    vectors[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        semdedup(vectors, epsilon=0.05, n_clusters=10, seed=3)
