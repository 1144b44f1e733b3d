"""Head thinning: SemDeDup near-duplicate removal and entity-frequency thinning. Tail images are
never removed; every removal is recorded in ``removed`` with its rule."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core.registry import step
from rebalance.domain.artifacts import Embeddings, EntityStatistics, LabeledDataset, positions_of
from rebalance.domain.classes import class_buckets, class_counts
from rebalance.errors import DataError

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


@step("semdedup", role="removes_rows", bypass="dataset")
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
    rebalance.methods.dedup). Only images whose classes are all in thin_buckets can be removed.
    """
    from rebalance.methods.dedup import semdedup

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
    return dataset.drop(drop, "semdedup", reasons, kept=image_ids[result.duplicate_of[drop]].tolist())


@step("entity_thinning", role="removes_rows", bypass="dataset")
def entity_thinning(
    dataset: LabeledDataset,
    statistics: EntityStatistics | None = None,
    *,
    tau: PositiveInt | None = None,
    pair_tau: PositiveInt | None = None,
    thin_buckets: tuple[Bucket, ...] = ("frequent",),
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> LabeledDataset:
    """ADR's data rebalancing ("From Head to Tail", Song et al., CVPR 2025): thin head images by
    how over-represented their entities are. Only images whose classes are all in thin_buckets
    can be removed; Bernoulli draws come from seed.

    With ``statistics`` (``entity_statistics``: the entities each image's own captions mention),
    ADR's caption-level rule (``rebalance.methods.entities.adr_keep_probabilities``): an image may be
    dropped only when every entity it mentions is over-represented (N_e > tau) and so is every
    pair of them (N_ef > pair_tau); it is kept with p = min(1, max(tau / min N_e, pair_tau /
    min N_ef)). An image that mentions a tail entity or pair, or none, is always kept. tau and
    pair_tau default to the median entity and pair frequency. Each removal names its entities.

    Without, the rule at the level of class labels (ADR's object entities): keep with
    p = min(1, tau / N_e), N_e = images of the image's most frequent class; tau defaults to the
    largest image count among the classes that are not thinned.

    ADR's thresholds on LLaVA-665K (its Table 1), in instances: token 120, object 304,
    co-occurrence 24, interrogation 4895.
    """
    images_per_class, _ = class_counts(dataset)
    buckets = class_buckets(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
    candidates = thinnable_images(dataset, buckets, thin_buckets)
    if statistics is not None:
        return _thin_by_caption_entities(dataset, statistics, candidates, tau, pair_tau, seed)
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


def _thin_by_caption_entities(
    dataset: LabeledDataset,
    statistics: EntityStatistics,
    candidates: np.ndarray,
    tau: int | None,
    pair_tau: int | None,
    seed: int,
) -> LabeledDataset:
    from rebalance.methods.entities import EntityCounts, adr_keep_probabilities

    image_ids = dataset.images["image_id"].to_numpy()
    rows, missing = positions_of(statistics.mentions["image_id"].to_numpy(), image_ids)
    if len(missing):
        raise DataError(
            f"the entity statistics lack {len(missing)} of this dataset's images (first ids: "
            f"{missing[:5].tolist()}): compute them with entity_statistics on this dataset"
        )
    names = statistics.entities["entity"].to_pylist()
    position = {name: number for number, name in enumerate(names)}
    mentioned = statistics.mentions["entities"].take(pa.array(rows)).to_pylist()
    frequency = statistics.entities["images"].to_numpy()
    pairs = statistics.pairs.to_pandas()
    counts = EntityCounts(
        names,
        [np.array([position[name] for name in entities], dtype=np.int64) for entities in mentioned],
        frequency,
        pairs.assign(first=pairs["first"].map(position), second=pairs["second"].map(position)),
    )
    tau = tau if tau is not None else float(np.median(frequency[frequency > 0])) if frequency.any() else 0
    pair_tau = pair_tau if pair_tau is not None else float(pairs["images"].median()) if len(pairs) else 0
    odds = adr_keep_probabilities(counts, tau, pair_tau)
    draws = np.random.default_rng(seed).random(dataset.num_rows)
    drop = candidates & (draws >= odds.keep)
    reasons = [
        f"entity thinning: every entity over-represented ({odds.why[row]}), kept with p = {odds.keep[row]:.4f}"
        for row in np.flatnonzero(drop)
    ]
    return dataset.drop(drop, "entity_thinning", reasons)
