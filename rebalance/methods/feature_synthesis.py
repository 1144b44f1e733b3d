"""Feature-space synthesis: SMOTE and calibrated Gaussian sampling on embeddings.

Both take float32 features ``x`` (n × d), integer ``labels`` and ``quotas`` (new samples wanted per
class) and return a ``Synthetic`` batch whose ``parents`` / ``neighbors`` / ``lambdas`` record how
each sample was made, so that a single sample can be re-derived and audited.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from rebalance.core.device import resolve_device
from rebalance.errors import DataError


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """New feature vectors, their class, and how each was made.

    ``parents``: row of the real sample it starts from (SMOTE) or −1 (Gaussian); ``neighbors``: row
    of the SMOTE neighbour, −1 otherwise; ``lambdas``: SMOTE's interpolation step in [0, 1), NaN
    otherwise. ``skipped`` maps a class to why it got fewer samples than asked.
    """

    vectors: np.ndarray
    labels: np.ndarray
    parents: np.ndarray
    neighbors: np.ndarray
    lambdas: np.ndarray
    skipped: dict[int, str]

    def __len__(self) -> int:
        return len(self.labels)


def smote(
    x: np.ndarray,
    labels: np.ndarray,
    quotas: np.ndarray,
    *,
    k: int = 5,
    seed: int = 0,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    device: str = "auto",
) -> Synthetic:
    """SMOTE (Chawla et al., 2002): x_new = x_i + λ · (x_nn − x_i), λ ~ U[0, 1).

    For class c, q_c base samples x_i are drawn uniformly with replacement from the class and x_nn
    uniformly among x_i's k nearest same-class neighbours (Euclidean, FAISS; k shrinks to n_c − 1
    for small classes; a class with one sample is skipped). imbalanced-learn's ``SMOTE`` draws the
    same way; unlike it, neighbours are searched only for the base samples actually drawn, which is
    what makes this fast when quotas are small beside the class. ``backend``: neighbours by FAISS
    on the CPU, or by an exact torch search on ``device`` (``auto``: torch when CUDA is available).
    """
    use_torch = backend == "torch" or (backend == "auto" and resolve_device(device).type == "cuda")

    rng = np.random.default_rng(seed)
    members_of = _members_by_class(labels, len(quotas))
    wanted = [int(c) for c in np.flatnonzero(quotas > 0)]
    skipped = {
        c: f"{len(members_of[c])} sample(s): SMOTE needs two to interpolate"
        for c in wanted
        if len(members_of[c]) < 2
    }
    wanted = [c for c in wanted if c not in skipped]
    total = int(sum(quotas[c] for c in wanted))
    dim = x.shape[1]
    # Written in place, class by class: at "raise every class to the majority" sizes the output is
    # several times the input, and temporaries per class would double the peak memory.
    vectors = np.empty((total, dim), dtype=np.float32)
    classes, parents, partners = (np.empty(total, dtype=np.int64) for _ in range(3))
    lambdas = np.empty(total, dtype=np.float32)
    start = 0
    for cls in wanted:
        members = members_of[cls]
        rows = _features(x[members], members)
        neighbours_k = min(k, len(members) - 1)
        count = int(quotas[cls])
        base = rng.integers(0, len(members), size=count)
        pick = rng.integers(0, neighbours_k, size=count)
        steps = rng.random(count, dtype=np.float32)
        queried, inverse = np.unique(base, return_inverse=True)
        search = _neighbours_torch if use_torch else _neighbours_faiss
        chosen = search(rows, queried, neighbours_k, device)[inverse, pick]
        block = vectors[start : start + count]
        np.subtract(rows[chosen], rows[base], out=block)
        block *= steps[:, None]
        block += rows[base]
        span = slice(start, start + count)
        classes[span], parents[span], partners[span], lambdas[span] = (
            cls,
            members[base],
            members[chosen],
            steps,
        )
        start += count
    return Synthetic(vectors, classes, parents, partners, lambdas, skipped)


def calibrated_gaussian(
    x: np.ndarray,
    labels: np.ndarray,
    quotas: np.ndarray,
    *,
    head: np.ndarray,
    borrow: int = 2,
    alpha: float = 0.1,
    lof_neighbors: int | None = 20,
    seed: int = 0,
) -> Synthetic:
    """Calibrated Gaussian sampling (distribution calibration, Yang et al., 2021; RCAL, Zhang et al., 2023).

    Per class: outliers are removed with the local outlier factor (``lof_neighbors``; classes with
    fewer samples keep all), then mean μ_c and covariance Σ_c. A class outside ``head`` borrows from
    the ``borrow`` head classes whose means are nearest to its own (set S):
    μ'_c = (μ_c + Σ_{h∈S} μ_h) / (|S| + 1),   Σ'_c = Σ_{h∈S} Σ_h / |S| + α·I.
    A head class keeps μ_c and Σ_c + α·I. q_c samples are drawn from N(μ'_c, Σ'_c).
    """
    rng = np.random.default_rng(seed)
    classes = np.flatnonzero(quotas > 0)
    members_of = _members_by_class(labels, len(quotas))
    stats = {
        cls: _class_moments(_features(x[members], members), lof_neighbors)
        for cls, members in enumerate(members_of)
        if len(members)
    }
    head_classes = [int(c) for c in np.flatnonzero(head) if c in stats and stats[c][1] is not None]
    dim = x.shape[1]
    parts: list[tuple[np.ndarray, ...]] = []
    skipped: dict[int, str] = {}
    for cls in classes:
        if cls not in stats:
            skipped[int(cls)] = "no samples to calibrate from"
            continue
        mean, cov = calibrated_moments(stats, int(cls), head_classes, borrow, alpha, dim)
        if cov is None:
            skipped[int(cls)] = "too few samples for a covariance and no head class to borrow from"
            continue
        count = int(quotas[cls])
        vectors = rng.multivariate_normal(mean, cov, size=count, method="cholesky").astype(np.float32)
        minus = np.full(count, -1)
        parts.append((vectors, np.full(count, cls), minus, minus, np.full(count, np.nan, np.float32)))
    return _collect(parts, dim, skipped)


def calibrated_moments(
    stats: dict[int, tuple[np.ndarray, np.ndarray | None]],
    cls: int,
    head_classes: list[int],
    borrow: int,
    alpha: float,
    dim: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """μ'_c and Σ'_c of ``calibrated_gaussian`` from per-class (mean, covariance) ``stats``."""
    mean, cov = stats[cls]
    ridge = alpha * np.eye(dim)
    donors = [h for h in head_classes if h != cls]
    if cls in head_classes or not donors:
        return mean, None if cov is None else cov + ridge
    distances = [float(np.linalg.norm(stats[h][0] - mean)) for h in donors]
    nearest = [donors[i] for i in np.argsort(distances, kind="stable")[:borrow]]
    calibrated_mean = (mean + sum(stats[h][0] for h in nearest)) / (len(nearest) + 1)
    calibrated_cov = sum(stats[h][1] for h in nearest) / len(nearest) + ridge
    return calibrated_mean, calibrated_cov


def _class_moments(rows: np.ndarray, lof_neighbors: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    rows = rows.astype(np.float64)
    if lof_neighbors is not None and len(rows) > lof_neighbors + 1:
        from sklearn.neighbors import LocalOutlierFactor

        inliers = LocalOutlierFactor(n_neighbors=lof_neighbors).fit_predict(rows) == 1
        rows = rows[inliers]
    cov = np.cov(rows, rowvar=False) if len(rows) > 1 else None
    return rows.mean(axis=0), cov


def _members_by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Row indices of each class, in row order (one stable sort instead of a scan per class)."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=num_classes))])
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]


def _features(rows: np.ndarray, members: np.ndarray) -> np.ndarray:
    """The class's rows as contiguous float32, checked finite (only the rows a class uses are read)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} feature row(s) are NaN or infinite (first rows: {members[bad][:5].tolist()})"
        )
    return rows


def _neighbours_faiss(rows: np.ndarray, queried: np.ndarray, k: int, device: str) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(rows.shape[1])
    index.add(rows)
    # k + 1 because each query finds itself; exact duplicates may come back in either order,
    # so the query's own row is removed explicitly rather than by position.
    _, found = index.search(rows[queried], k + 1)
    return _without_self(found, queried, k)


def _neighbours_torch(rows: np.ndarray, queried: np.ndarray, k: int, device: str) -> np.ndarray:
    """Exact k nearest (Euclidean) by ‖q‖² − 2q·x + ‖x‖² in torch, the query itself excluded."""
    import torch

    target = resolve_device(device)
    data = torch.from_numpy(rows).to(target)
    queries = data[torch.from_numpy(queried).to(target)]
    squared = (data * data).sum(dim=1)
    distances = squared[queried][:, None] - 2 * queries @ data.T + squared[None, :]
    distances[torch.arange(len(queried), device=target), torch.from_numpy(queried).to(target)] = float("inf")
    return torch.topk(distances, k, dim=1, largest=False).indices.cpu().numpy()


def _without_self(found: np.ndarray, queried: np.ndarray, k: int) -> np.ndarray:
    not_self = found != queried[:, None]
    # Keep the first k entries that are not the query itself (a row has at most one self entry).
    order = np.argsort(~not_self, axis=1, kind="stable")
    return np.take_along_axis(found, order, axis=1)[:, :k]


def _collect(parts: list[tuple[np.ndarray, ...]], dim: int, skipped: dict[int, str]) -> Synthetic:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Synthetic(
            np.zeros((0, dim), np.float32), empty, empty, empty, np.zeros(0, np.float32), skipped
        )
    vectors, labels, parents, neighbors, lambdas = (
        np.concatenate(column) for column in zip(*parts, strict=True)
    )
    return Synthetic(
        vectors.astype(np.float32, copy=False),
        labels.astype(np.int64, copy=False),
        parents.astype(np.int64, copy=False),
        neighbors.astype(np.int64, copy=False),
        lambdas.astype(np.float32, copy=False),
        skipped,
    )
