"""Head thinning: SemDeDup near-duplicate removal and entity-frequency thinning. Tail images are
never removed; every removal is recorded in ``removed`` with its rule."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core.artifacts import Embeddings, LabeledDataset
from rebalance.core.registry import step
from rebalance.domain.classes import class_buckets, class_counts

Bucket = Literal["rare", "common", "frequent"]


def thinnable_images(
    dataset: LabeledDataset, buckets: np.ndarray, thin_buckets: tuple[str, ...]
) -> np.ndarray:
    """True for images whose every class (``buckets``: one per class) is in ``thin_buckets``: an image
    with any tail class is kept."""
    in_bucket = np.isin(buckets, thin_buckets)
    lists = dataset.category_lists()
    lengths = np.diff(lists.offsets.to_numpy())
    outside = np.bincount(
        np.repeat(np.arange(dataset.num_rows), lengths),
        weights=~in_bucket[lists.flatten().to_numpy()],
        minlength=dataset.num_rows,
    )
    return (lengths > 0) & (outside == 0)


@step("semdedup", version=2, role="removes_rows", bypass="dataset")
def semdedup_step(
    dataset: LabeledDataset,
    embeddings: Embeddings,
    *,
    epsilon: confloat(gt=0, lt=1) = 0.05,
    images_per_cluster: PositiveInt = 1000,
    kmeans_iterations: PositiveInt = 10,
    thin_buckets: tuple[Bucket, ...] = ("frequent",),
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> LabeledDataset:
    """Remove semantic near-duplicates (cosine > 1 - epsilon) of head images, SemDeDup-style.

    Spherical k-means into ceil(n / images_per_cluster) clusters; within a cluster and class, items
    are visited farthest-from-centroid first and dropped when too similar to a kept item (see
    rebalance.dedup). Only images whose classes are all in thin_buckets can be removed.
    """
    from rebalance.dedup import semdedup

    vectors = embeddings.aligned_to(dataset.images["image_id"].to_numpy())
    groups = pc.dictionary_encode(
        pc.binary_join(pc.cast(dataset.category_lists(), pa.list_(pa.string())), "+")
    )
    result = semdedup(
        vectors,
        epsilon=epsilon,
        n_clusters=-(-dataset.num_rows // images_per_cluster),
        seed=seed,
        groups=groups.indices.to_numpy(zero_copy_only=False),
        protected=~thinnable_images(
            dataset,
            class_buckets(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images),
            thin_buckets,
        ),
        kmeans_iterations=kmeans_iterations,
    )
    drop = ~result.keep
    image_ids = dataset.images["image_id"].to_numpy()
    reasons = [
        f"near-duplicate of image {image_ids[keeper]} (cosine {similarity:.4f}, {embeddings.encoder})"
        for keeper, similarity in zip(result.duplicate_of[drop], result.similarity[drop], strict=True)
    ]
    return dataset.drop(drop, "semdedup", reasons)


@step("entity_thinning", version=2, role="removes_rows", bypass="dataset")
def entity_thinning(
    dataset: LabeledDataset,
    *,
    tau: PositiveInt | None = None,
    thin_buckets: tuple[Bucket, ...] = ("frequent",),
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> LabeledDataset:
    """Keep each head image with probability p = min(1, tau / N_e), N_e = images of its most frequent class.

    The data-rebalancing rule of ADR ("From Head to Tail", Song et al., 2025) at the level of class
    labels (ADR's object entities): a class with N_e images keeps about min(N_e, tau) of them.
    ADR's thresholds on LLaVA-665K (its Table 1) are token 120, object 304, co-occurrence 24,
    interrogation 4895; the caption-based levels need captions, which this dataset type lacks.
    tau defaults to the largest image count among the classes that are not thinned, so head
    classes come down to the size of the largest protected class. Bernoulli draws come from seed.
    """
    images_per_class, _ = class_counts(dataset)
    buckets = class_buckets(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
    candidates = thinnable_images(dataset, buckets, thin_buckets)
    protected_counts = images_per_class[~np.isin(buckets, thin_buckets)]
    threshold = (
        tau
        if tau is not None
        else int(protected_counts.max())
        if len(protected_counts)
        else int(np.median(images_per_class))
    )
    lists = dataset.category_lists()
    lengths = np.diff(lists.offsets.to_numpy())
    most_frequent = np.zeros(dataset.num_rows)
    nonempty = lengths > 0
    most_frequent[nonempty] = np.maximum.reduceat(
        images_per_class[lists.flatten().to_numpy()], lists.offsets.to_numpy()[:-1][nonempty]
    )
    keep_probability = np.minimum(1.0, threshold / np.maximum(most_frequent, 1))
    draws = np.random.default_rng(seed).random(dataset.num_rows)
    drop = candidates & (draws >= keep_probability)
    reasons = [
        f"entity thinning: kept with p = min(1, {threshold} / {int(n)}) = {p:.4f}"
        for n, p in zip(most_frequent[drop], keep_probability[drop], strict=True)
    ]
    return dataset.drop(drop, "entity_thinning", reasons)
