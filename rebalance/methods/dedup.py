"""SemDeDup: semantic near-duplicate removal on embeddings (Abbas et al., "SemDeDup", 2023).

1. L2-normalise the embeddings and cluster them with spherical k-means (faiss, trained on a sample
   of ``sample_per_cluster`` points per centroid).
2. Within each cluster (and, here, within each label group, so that two images of different
   classes are never called duplicates), visit items from the farthest to the closest to the
   centroid; keep an item unless its cosine similarity to an already *kept* item exceeds
   1 − ε. The farthest (least prototypical) copy is the one kept, as the paper recommends.
   (The reference implementation compares with every earlier item, kept or not; comparing with
   kept items only never removes an item whose only near-copy was itself removed.)
3. Protected items (tail classes) are never removed and never compared.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np

from rebalance.errors import RebalanceError

_BLOCK_ROWS = 2048


@dataclasses.dataclass(frozen=True)
class DedupResult:
    """``keep[i]``: item i survives; else ``duplicate_of[i]`` is the kept item it duplicates, with
    cosine similarity ``similarity[i]`` (−1 and NaN for kept items)."""

    keep: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    clusters: np.ndarray


def semdedup(
    vectors: np.ndarray,
    *,
    epsilon: float,
    n_clusters: int,
    seed: int,
    groups: np.ndarray | None = None,
    protected: np.ndarray | None = None,
    kmeans_iterations: int = 10,
    sample_per_cluster: int = 64,
) -> DedupResult:
    """Find near-duplicates (cosine > 1 − ``epsilon``) as described in the module docstring."""
    try:
        import faiss
    except ImportError:
        raise RebalanceError(
            "SemDeDup needs FAISS: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA 12 node)"
        ) from None

    count = len(vectors)
    groups = np.zeros(count, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    protected = np.zeros(count, dtype=bool) if protected is None else np.asarray(protected, dtype=bool)
    keep = np.ones(count, dtype=bool)
    duplicate_of = np.full(count, -1, dtype=np.int64)
    similarity = np.full(count, np.nan, dtype=np.float32)
    if count == 0:
        return DedupResult(keep, duplicate_of, similarity, np.zeros(0, dtype=np.int64))
    # Memory: the input is never copied whole (1M × 512 float32 is 2 GB); only the k-means sample
    # and one cluster at a time are normalised copies.
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    if not np.isfinite(norms).all():
        bad = np.flatnonzero(~np.isfinite(norms))
        raise ValueError(f"embeddings contain NaN or infinite values (rows {bad[:5].tolist()})")
    norms[norms == 0] = 1.0  # a zero vector has cosine 0 with everything: never a duplicate
    clusters_wanted = max(1, min(n_clusters, count))
    rng = np.random.default_rng(seed)
    sample_size = min(count, clusters_wanted * sample_per_cluster)
    sample = np.sort(rng.choice(count, size=sample_size, replace=False))
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        clusters_wanted,
        niter=kmeans_iterations,
        seed=seed,
        spherical=True,
        max_points_per_centroid=max(sample_per_cluster, -(-sample_size // clusters_wanted)),
        min_points_per_centroid=1,
        verbose=False,
    )
    kmeans.train(vectors[sample] / norms[sample, None])
    # argmax_c x·c equals argmax_c x̂·c, so raw vectors are assigned without normalising them.
    clusters = np.empty(count, dtype=np.int64)
    to_centroid = np.empty(count, dtype=np.float32)
    for start in range(0, count, 65536):
        rows = slice(start, start + 65536)
        best, assigned = kmeans.index.search(np.ascontiguousarray(vectors[rows]), 1)
        clusters[rows] = assigned[:, 0]
        to_centroid[rows] = best[:, 0] / norms[rows]

    candidates = np.flatnonzero(~protected)
    # Segments of equal (cluster, group), each ordered farthest-from-centroid first.
    order = candidates[np.lexsort((to_centroid[candidates], groups[candidates], clusters[candidates]))]
    segment_key = clusters[order] * (groups.max() + 1) + groups[order]
    bounds = np.flatnonzero(np.diff(segment_key)) + 1
    threshold = np.float32(1.0 - epsilon)
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        member_vectors = vectors[members] / norms[members, None]
        kept = np.ones(len(members), dtype=bool)
        keeper = np.full(len(members), -1, dtype=np.int64)
        keeper_sim = np.full(len(members), np.nan, dtype=np.float32)
        for start in range(0, len(members), _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, len(members))
            sims = member_vectors[start:stop] @ member_vectors[:stop].T
            _greedy_block(sims, start, threshold, kept, keeper, keeper_sim)
        removed = ~kept
        keep[members[removed]] = False
        duplicate_of[members[removed]] = members[keeper[removed]]
        similarity[members[removed]] = keeper_sim[removed]
    return DedupResult(keep, duplicate_of, similarity, clusters)


# A compiled loop: each decision depends on the decisions before it, so it cannot be one numpy op.
@numba.njit(cache=True, nogil=True)
def _greedy_block(sims, start, threshold, kept, keeper, keeper_sim):  # pragma: no cover - compiled
    for row in range(sims.shape[0]):
        item = start + row
        for earlier in range(item):
            if kept[earlier] and sims[row, earlier] > threshold:
                kept[item] = False
                keeper[item] = earlier
                keeper_sim[item] = sims[row, earlier]
                break
