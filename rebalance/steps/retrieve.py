"""The retrieval step: fill under-represented classes from a pool through its index."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core.device import Device
from rebalance.core.registry import step
from rebalance.domain.artifacts import ConceptFrequency, Embeddings, LabeledDataset, VectorIndex, positions_of
from rebalance.domain.artifacts.vectors import unit_rows
from rebalance.domain.classes import balance_quotas, concept_tail, freeze_buckets
from rebalance.domain.prompts import DEFAULT_TEMPLATES, class_prompt_names
from rebalance.errors import DataError
from rebalance.methods import index as vector_index
from rebalance.methods.precision import RetrievalPrecision, estimate_and_gate
from rebalance.methods.retrieval import MAX_K, Assignment, Target, knn_vote_filter, retrieve_with_quotas
from rebalance.models.encoders import text_queries

# Chosen with the panels of the demo and the confusable split (docs/retrieval_precision.md).
DEFAULT_MIN_PRECISION = 0.5


@step("retrieve", role="adds_rows", bypass="dataset")
def retrieve(
    dataset: LabeledDataset,
    pool: LabeledDataset,
    index: VectorIndex,
    embeddings: Embeddings | None = None,
    frequency: ConceptFrequency | None = None,
    outside: Embeddings | None = None,
    *,
    query: Literal["image", "text", "both"] = "image",
    image_query: Literal["centroid", "examples"] = "centroid",
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    target: Target | PositiveInt = "median",
    max_per_class: PositiveInt | None = None,
    tail_only: bool = False,
    min_score: confloat(ge=-1, le=1) | None = None,
    vote_k: PositiveInt | None = None,
    min_precision: confloat(ge=0, le=1) | None = DEFAULT_MIN_PRECISION,
    canaries_per_class: PositiveInt = 500,
    composition_sample: PositiveInt = 20_000,
    seed: NonNegativeInt = 0,
    duplicate_threshold: confloat(gt=0, le=1) | None = 0.995,
    nprobe: PositiveInt | None = None,
    backend: vector_index.Backend = "auto",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    device: Device = "auto",
) -> LabeledDataset:
    """Add pool images to the classes below a balance target, as REAL-Linear fills the tail.

    Quota per class: min(max_per_class, T − n_c), T the target over the classes' *original* counts
    (``rebalance.domain.classes.balance_quotas``, shared with synthesis), for every class below it, or
    only REAL's concept tail (``tail_only`` with ``frequency``).
    Queries: ``image`` = each class's examples in ``embeddings``, every image that has the class
    (their normalised ``centroid``, or every example as a kNN query, ``examples``); ``text`` = the class's prompt ensemble
    (``templates`` filled with its most frequent caption synonym from ``frequency``, else its
    name), embedded by the encoder that embedded the pool; ``both`` = the sum of the two, for
    CLIP-style encoders. A pool item goes to at most one class (its best match), never one that is
    already in the dataset (same file, or cosine ≥ ``duplicate_threshold`` to a dataset image; null
    turns the near-copy check off), and never below ``min_score``. With ``vote_k``, an item joins
    class c only when c wins the vote of its ``vote_k`` nearest dataset images over *all* classes
    (``rebalance.methods.retrieval.knn_vote_filter``): a precision filter that keeps, say, a coat found
    near a shirt example out of the shirts.

    Precision before quantity: each class's precision is estimated without pool labels
    (``rebalance.methods.precision``: every labelled image, at most ``canaries_per_class`` a class, goes
    through the same rule as a canary left out of its own vote and queries; ``outside`` holds
    embeddings of images known to lie outside the label set; the pool's class mix is estimated from
    ``composition_sample`` pool items), and a class keeps its best-ranked candidates only as far as
    the lower end of the estimate's 90 % interval stays at or above ``min_precision`` (null: keep
    all, still estimate). The
    categories table records per class the quota, the candidates, what was kept, the estimate with
    its 90 % interval and why a quota went unmet. Needs the dataset's ``embeddings`` (the canaries);
    a text-only retrieval is not estimated.

    Retrieved rows are new images with ``source = retrieved`` and provenance columns
    ``retrieval_query``, ``retrieval_score``, ``pool_image_id`` and ``pool_file_name`` (plus the
    pool's ``caption`` / ``reference_label`` when it has them); every original row is kept as is.
    Each class's rare/common/frequent bucket is frozen at its count before retrieval, so a filled
    tail class is still protected from head dedup and thinning downstream.
    """
    if embeddings is None and query != "text":
        raise DataError(
            f"query: {query} needs the dataset's embeddings; wire `embeddings`, or use query: text"
        )
    if embeddings is not None and embeddings.encoder != index.encoder:
        raise DataError(
            f"the dataset was embedded by {embeddings.encoder!r} but the pool index by {index.encoder!r}; "
            "embed both with the same encoder"
        )
    if vote_k is not None and embeddings is None:
        raise DataError("vote_k needs the dataset's embeddings (the voters); wire `embeddings`")
    if tail_only and frequency is None:
        raise DataError("tail_only needs the concept frequency table; wire `frequency`")
    eligible = concept_tail(dataset, frequency) if tail_only else None
    quotas = balance_quotas(dataset, target, max_per_class=max_per_class, eligible=eligible)
    pair_rows, pair_classes = dataset.label_pairs()
    image_ids = dataset.images["image_id"].to_numpy()
    dataset_vectors = None if embeddings is None else _normalised(embeddings.aligned_to(image_ids), image_ids)
    queries, query_classes, descriptions = _queries(
        dataset,
        (pair_rows, pair_classes),
        dataset_vectors,
        frequency,
        query,
        image_query,
        templates,
        index.encoder,
        device,
    )
    if queries.shape[1] != index.index.d:
        raise DataError(
            f"the queries have {queries.shape[1]} dimensions but the pool index has {index.index.d} "
            f"(embedded by {index.encoder!r}); precomputed pool embeddings must name the encoder that made them"
        )
    pool_positions = _pool_positions(pool, index)
    excluded = _excluded_rows(
        dataset, pool, pool_positions, index.index, dataset_vectors, duplicate_threshold
    )
    probes = nprobe or index.meta.get("nprobe", 16)

    def search(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = vector_index.search(
            index.index, vectors, k, nprobe=probes, backend=backend, device=device
        )
        if min_score is not None:
            rows = np.where(scores >= min_score, rows, -1)
        return scores, rows

    agrees = None
    if vote_k is not None:
        _enable_reconstruct(index.index)
        agrees = knn_vote_filter(
            dataset_vectors,
            (pair_rows, pair_classes),
            len(dataset.class_names()),
            vote_k,
            lambda rows: unit_rows(index.index.reconstruct_batch(rows.astype(np.int64))),
        )
    found = retrieve_with_quotas(
        search, queries, query_classes, quotas, index.num_rows, excluded=excluded, agrees=agrees
    )
    precision = None
    if dataset_vectors is not None:
        if outside is not None and outside.encoder != index.encoder:
            raise DataError(
                f"the outside canaries were embedded by {outside.encoder!r} but the pool index by "
                f"{index.encoder!r}; embed both with the same encoder"
            )
        _enable_reconstruct(index.index)
        image_queries = query == "image" and image_query == "examples"
        precision = estimate_and_gate(
            dataset_vectors,
            (pair_rows, pair_classes),
            len(dataset.class_names()),
            queries,
            query_classes,
            pair_rows if image_queries else np.full(len(queries), -1),
            (found.classes, found.scores),
            quotas,
            lambda rows: unit_rows(index.index.reconstruct_batch(rows.astype(np.int64))),
            index.num_rows,
            vote_k=vote_k,
            min_score=min_score,
            min_precision=min_precision,
            outside=None if outside is None else _normalised(outside.vectors, outside.ids),
            canaries_per_class=canaries_per_class,
            composition_sample=composition_sample,
            seed=seed,
        )
        found = _kept(found, precision.kept)
    frozen = freeze_buckets(dataset, rare_max_images=rare_max_images, common_max_images=common_max_images)
    frozen = _with_precision_ledger(frozen, quotas, found, precision)
    return _with_retrieved(frozen, pool, pool_positions, index, found, descriptions)


def _kept(found: Assignment, kept: np.ndarray) -> Assignment:
    """The first ``kept[c]`` items of each class (an assignment lists a class's items best first)."""
    starts = np.searchsorted(found.classes, np.arange(len(kept)))
    rank = np.arange(len(found)) - starts[found.classes]
    keep = rank < kept[found.classes]
    return Assignment(
        found.classes[keep], found.rows[keep], found.scores[keep], found.queries[keep], found.capped
    )


def _with_cap(shortfall: str | None, capped: bool) -> str | None:
    if not capped:
        return shortfall
    cap = f"its search stopped widening at k = {MAX_K} neighbours a query"
    return f"{shortfall}; {cap}" if shortfall else cap


def _with_precision_ledger(
    dataset: LabeledDataset, quotas: np.ndarray, found: Assignment, precision: RetrievalPrecision | None
) -> LabeledDataset:
    """The dataset whose categories table says, per class, what retrieval was asked for and gave."""
    num_classes = len(quotas)
    taken = np.bincount(found.classes, minlength=num_classes)
    missing = np.full(num_classes, np.nan)
    columns = {
        "retrieval_quota": pa.array(quotas, pa.int64()),
        "retrieval_candidates": pa.array(taken if precision is None else precision.candidates, pa.int64()),
        "retrieval_kept": pa.array(taken, pa.int64()),
        "precision_estimate": _floats(missing if precision is None else precision.estimate),
        "precision_low": _floats(missing if precision is None else precision.low),
        "precision_high": _floats(missing if precision is None else precision.high),
        "retrieval_shortfall": pa.array(
            [
                _with_cap(
                    None
                    if precision is None and taken[c] >= quotas[c]
                    else (
                        precision.shortfall[c]
                        if precision is not None
                        else f"the pool offered {taken[c]} of {quotas[c]} wanted"
                    ),
                    found.capped is not None and bool(found.capped[c]),
                )
                for c in range(num_classes)
            ],
            pa.string(),
        ),
    }
    return dataset.with_category_columns(columns)


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array([None if np.isnan(v) else round(float(v), 4) for v in values], pa.float64())


def _normalised(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} embedding(s) are NaN, infinite or zero (first ids: {ids[bad][:5].tolist()})"
        )
    return vectors / norms


def _queries(
    dataset: LabeledDataset,
    pairs: tuple[np.ndarray, np.ndarray],
    dataset_vectors: np.ndarray | None,
    frequency: ConceptFrequency | None,
    query: str,
    image_query: str,
    templates: tuple[str, ...],
    encoder: str,
    device: str,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Query vectors, the class of each, and a readable description of each for provenance.

    Image queries use every (image, class) pair, so an image with several classes serves each.
    """
    num_classes = len(dataset.class_names())
    parts: dict[str, np.ndarray] = {}
    if query in ("text", "both"):
        names = class_prompt_names(dataset, frequency)
        parts["text"] = text_queries(names, templates, encoder, device)
        text_descriptions = [f"text: {templates[0].format(name)}" for name in names]
    if query == "text":
        return parts["text"], np.arange(num_classes), text_descriptions
    assert dataset_vectors is not None
    ids = dataset.images["image_id"].to_numpy()
    rows, classes = pairs
    if image_query == "examples" and query == "image":
        return dataset_vectors[rows], classes, [f"image: kNN of example {image_id}" for image_id in ids[rows]]
    sums = np.zeros((num_classes, dataset_vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, classes, dataset_vectors[rows])
    sizes = np.bincount(classes, minlength=num_classes)
    centroids = unit_rows(sums)
    if query == "both":
        combined = unit_rows(centroids + parts["text"])
        return (
            combined,
            np.arange(num_classes),
            [f"{t} + centroid of {n} image(s)" for t, n in zip(text_descriptions, sizes, strict=True)],
        )
    has_examples = sizes > 0
    return (
        centroids[has_examples],
        np.nonzero(has_examples)[0],
        [f"image: centroid of {n} image(s)" for n in sizes[has_examples]],
    )


def _pool_positions(pool: LabeledDataset, index: VectorIndex) -> np.ndarray:
    """For each index row, the pool row holding that image id."""
    pool_ids, rows = pool.images["image_id"], pool.num_rows
    if rows and pc.min(pool_ids).as_py() == 0 and pc.max(pool_ids).as_py() == rows - 1:
        # Ids sorted and unique (the dataset's invariant) from 0 to n - 1 are the row numbers, as
        # the pool ingests number them: an index id is its pool row, and the index's ids (memory-
        # mapped, 8 bytes a pool image) are neither copied nor sorted.
        low, high = (int(np.min(index.ids)), int(np.max(index.ids))) if len(index.ids) else (0, 0)
        if low < 0 or high >= rows:
            raise DataError(
                f"the index holds ids {low}..{high}, the pool's are 0..{rows - 1}: some indexed ids "
                "are not in the pool; index the same pool"
            )
        return index.ids
    found, missing = positions_of(pool_ids.to_numpy(), index.ids)
    if len(missing):
        raise DataError(
            f"{len(missing)} indexed id(s) are not in the pool (first: {missing[:5].tolist()}); index the same pool"
        )
    return found


def _excluded_rows(
    dataset: LabeledDataset,
    pool: LabeledDataset,
    pool_positions: np.ndarray,
    faiss_index,
    dataset_vectors: np.ndarray | None,
    duplicate_threshold: float | None,
):
    """A function flagging index rows that are already in the dataset: the same file, or a near copy."""
    import faiss

    # Synthetic feature rows have no file (file_name null).
    own_files = {
        dataset.image_ref(name).identity() for name in dataset.images["file_name"].to_pylist() if name
    }
    pool_files = pool.images["file_name"]  # indexed per candidate: the pool may hold millions of rows
    nearest = None
    if dataset_vectors is not None and len(dataset_vectors) and duplicate_threshold is not None:
        nearest = faiss.IndexFlatIP(dataset_vectors.shape[1])
        nearest.add(dataset_vectors)
        _enable_reconstruct(faiss_index)

    def excluded(rows: np.ndarray) -> np.ndarray:
        same_file = np.array(
            [
                pool.image_ref(pool_files[int(pool_positions[row])].as_py()).identity() in own_files
                for row in rows
            ],
            dtype=bool,
        )
        if nearest is None:
            return same_file
        candidates = faiss_index.reconstruct_batch(rows.astype(np.int64))
        closest, _ = nearest.search(unit_rows(candidates), 1)
        return same_file | (closest[:, 0] >= duplicate_threshold)

    return excluded


def _enable_reconstruct(faiss_index) -> None:
    # IVF indexes reconstruct a vector by id only with a direct map (8 bytes a vector).
    import faiss

    try:
        ivf = faiss.extract_index_ivf(faiss_index)
    except RuntimeError:
        return
    if ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()


def _with_retrieved(
    dataset: LabeledDataset,
    pool: LabeledDataset,
    pool_positions: np.ndarray,
    index: VectorIndex,
    found: Assignment,
    descriptions: list[str],
) -> LabeledDataset:
    taken = pool.images.take(pa.array(pool_positions[found.rows], pa.int64()))
    columns = {
        "file_name": pa.array(
            # Relative to the dataset's image root when it has one, so the cache and exports stay movable.
            [pool.image_ref(n).text(dataset.image_root) for n in taken["file_name"].to_pylist()],
            pa.string(),
        ),
        "width": taken["width"],
        "height": taken["height"],
        "source": pa.array(["retrieved"] * len(found)),
        "retrieval_query": pa.array([descriptions[q] for q in found.queries], pa.string()),
        "retrieval_score": pa.array(found.scores.astype(np.float64), pa.float64()),
        "pool_image_id": pa.array(index.ids[found.rows], pa.int64()),
        "pool_file_name": taken["file_name"],
    }
    columns |= {name: taken[name] for name in ("caption", "reference_label") if name in taken.column_names}
    category_ids = dataset.categories["category_id"].to_numpy()[found.classes]
    return dataset.add_images(columns, category_ids)
