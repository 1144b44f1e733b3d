"""Index steps: a pool's embeddings into a FAISS index, in one process (``build_index``) or trained
once and filled shard by shard on the executor (``train_index`` + ``fill_index``)."""

from __future__ import annotations

import numpy as np
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from rebalance.core.registry import step
from rebalance.domain.artifacts import Embeddings, VectorIndex
from rebalance.errors import DataError
from rebalance.methods import index as vector_index


@step("build_index", role="embeds")
def build_index(
    embeddings: Embeddings,
    *,
    factory: str | None = None,
    nprobe: PositiveInt = 16,
    max_memory_gb: PositiveFloat = 8.0,
    seed: NonNegativeInt = 0,
) -> VectorIndex:
    """Index a pool's embeddings with FAISS (inner product = cosine on normalised vectors).

    ``factory`` is any ``faiss.index_factory`` string; when omitted it is chosen by size
    (``rebalance.methods.index.auto_factory``: exact ``Flat`` up to 50k vectors, then IVF, with PQ codes
    when the raw vectors exceed ``max_memory_gb``). Trained on a seeded sample, built on the CPU
    (the same index file whether or not a GPU is present), searched on a GPU when one is usable.
    """
    factory = _factory(embeddings, factory, max_memory_gb)
    # The embeddings stay memory-mapped: the index reads them a chunk at a time.
    index = vector_index.build_index(
        embeddings.vectors, factory, seed=seed, normalise=True, row_names=embeddings.ids
    )
    ids = np.asarray(embeddings.ids, dtype=np.int64)
    return VectorIndex(index, ids, _meta(embeddings, factory, len(ids), nprobe, max_memory_gb))


@step("train_index", role="embeds")
def train_index(
    embeddings: Embeddings,
    *,
    factory: str | None = None,
    nprobe: PositiveInt = 16,
    max_memory_gb: PositiveFloat = 8.0,
    seed: NonNegativeInt = 0,
) -> VectorIndex:
    """An empty index, trained on a seeded sample of the pool (``build_index``'s choice of factory
    and sample): what ``fill_index`` fills shard by shard. ``max_memory_gb`` also caps the filled
    index: IVF lists that would exceed it are merged into a file beside it instead of memory."""
    factory = _factory(embeddings, factory, max_memory_gb)
    index = vector_index.train_index(
        embeddings.vectors, factory, seed=seed, normalise=True, row_names=embeddings.ids
    )
    return VectorIndex(
        index, np.zeros(0, dtype=np.int64), _meta(embeddings, factory, 0, nprobe, max_memory_gb)
    )


@step("fill_index", shardable=True, role="embeds")
def fill_index(embeddings: Embeddings, trained: VectorIndex) -> VectorIndex:
    """Add the pool's vectors to the ``trained`` index: sharded over the embeddings, each shard on
    its own worker with the same trained quantizer, the shards merged in order into the index that
    one process would have built (a killed build keeps its finished shards). When the merged lists
    exceed the trained index's ``max_memory_gb`` they are merged on disk (``index.ivfdata``,
    memory-mapped when searched), never loaded whole."""
    import faiss

    if embeddings.encoder != trained.encoder:
        raise DataError(
            f"the index was trained on {trained.encoder!r} vectors but these are {embeddings.encoder!r}"
        )
    index = faiss.clone_index(trained.index)
    vector_index.add_vectors(index, embeddings.vectors, normalise=True, row_names=embeddings.ids)
    ids = np.asarray(embeddings.ids, dtype=np.int64)
    return VectorIndex(index, ids, {**trained.meta, "vectors": len(ids)})


def _factory(embeddings: Embeddings, factory: str | None, max_memory_gb: float) -> str:
    vectors = embeddings.vectors
    return factory or vector_index.auto_factory(
        len(vectors), vectors.shape[1], max_memory_bytes=int(max_memory_gb * 2**30)
    )


def _meta(embeddings: Embeddings, factory: str, count: int, nprobe: int, max_memory_gb: float) -> dict:
    return {
        "max_memory_gb": max_memory_gb,
        "factory": factory,
        "encoder": embeddings.encoder,
        "vectors": count,
        "dim": int(embeddings.vectors.shape[1]),
        "nprobe": nprobe,
    }
