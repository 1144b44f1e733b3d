"""Vector indexes: FAISS on CPU or GPU, and an exact torch search on a GPU when faiss-gpu is missing.

Vectors are L2-normalised by the encoders, so every index uses the inner product: a score is a
cosine similarity. ``auto_factory`` picks a ``faiss.index_factory`` string by pool size (the rule
autofaiss applies, simplified), and ``search`` picks the fastest exact-or-approximate backend at
hand without changing results for exact indexes.
"""

from __future__ import annotations

import math
import weakref
from typing import Literal

import numpy as np

from rebalance.domain.artifacts.vectors import unit_rows as unit_rows
from rebalance.errors import DataError, RebalanceError
from rebalance.io.faiss_files import bytes_per_vector as bytes_per_vector
from rebalance.io.faiss_files import drop_lists as drop_lists
from rebalance.io.faiss_files import first_line, ivf_lists_of
from rebalance.io.faiss_files import is_ivf as is_ivf
from rebalance.io.faiss_files import merge_indexes as merge_indexes
from rebalance.io.faiss_files import merge_on_disk as merge_on_disk
from rebalance.io.memmaps import CHUNK_ROWS, release_mapped_pages, release_mapped_range

Backend = Literal["auto", "faiss", "torch"]

EXACT_UP_TO = 50_000
"""Pools up to this size get an exact ``Flat`` index: a full scan is fast enough there."""


def auto_factory(num_vectors: int, dim: int, *, max_memory_bytes: int = 8 << 30) -> str:
    """The FAISS index for a pool of ``num_vectors`` × ``dim`` float32 vectors.

    - ≤ 50k vectors: ``Flat`` (exact).
    - larger: ``IVF{nlist},Flat`` with nlist the power of two nearest 4·√n (FAISS's guideline of
      4–16·√n lists), searched with ``nprobe`` lists;
    - when the raw vectors exceed ``max_memory_bytes``: ``IVF{nlist},PQ{m}`` with m the largest
      divisor of ``dim`` ≤ 64 (8-bit codes, m bytes a vector).
    """
    if num_vectors <= EXACT_UP_TO:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(num_vectors)))
    if num_vectors * dim * 4 <= max_memory_bytes:
        return f"IVF{nlist},Flat"
    m = max(d for d in range(1, min(64, dim) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def training_sample_size(factory: str, num_vectors: int) -> int:
    """How many vectors train the index: 40 per IVF list (FAISS warns below 39), and at least 2¹⁶
    for product quantisation (256 codewords a sub-quantizer, FAISS warns below 39 points each);
    other trained indexes (scalar quantisers) take 2¹⁶."""
    wanted = max(40 * _ivf_lists(factory), (1 << 16) if "PQ" in factory else 0) or (1 << 16)
    return min(num_vectors, wanted)


ADD_CHUNK_ROWS = CHUNK_ROWS
"""Vectors converted and added at a time: memory holds the index and one chunk, not the pool."""


def build_index(
    vectors: np.ndarray,
    factory: str,
    *,
    seed: int = 0,
    normalise: bool = False,
    row_names: np.ndarray | None = None,
    chunk_rows: int = ADD_CHUNK_ROWS,
):
    """Train (on a seeded sample) and fill a CPU FAISS index with ``vectors`` (n × d, any float
    dtype; a memory map stays on disk), ``chunk_rows`` at a time.

    ``normalise`` scales each row to unit length as it is read (a row that is zero, NaN or
    infinite is an error naming it by ``row_names``, else its position). Memory is the index plus
    one float32 chunk, so a float16 pool on disk is never copied whole.
    """
    index = train_index(
        vectors, factory, seed=seed, normalise=normalise, row_names=row_names, chunk_rows=chunk_rows
    )
    add_vectors(index, vectors, normalise=normalise, row_names=row_names, chunk_rows=chunk_rows)
    return index


def train_index(
    vectors: np.ndarray,
    factory: str,
    *,
    seed: int = 0,
    normalise: bool = False,
    row_names: np.ndarray | None = None,
    chunk_rows: int = ADD_CHUNK_ROWS,
):
    """An empty CPU FAISS index ``factory``, trained on a seeded sample of ``vectors`` when it needs
    training (IVF lists, PQ codebooks); ``add_vectors`` fills it, in one process or per shard."""
    import faiss

    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise RebalanceError(f"faiss cannot build the index {factory!r}: {first_line(error)}") from None
    if not index.is_trained:
        sample = training_sample_size(factory, len(vectors))
        lists = _ivf_lists(factory)
        if lists and len(vectors) < lists:
            raise DataError(
                f"{factory!r} needs at least {lists} vectors to train; the pool has {len(vectors)}"
            )
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=sample, replace=False))
        _seed_clustering(index, seed)
        # Gathered a block of the pool at a time, not a block of the sample: sorted sample rows
        # spread over the whole pool, and reading any of them maps the pages around it, so a
        # sample block would leave most of a memory-mapped pool resident until released.
        blocks = np.searchsorted(rows, np.arange(0, len(vectors) + chunk_rows, chunk_rows))
        parts = []
        for low, high in zip(blocks[:-1], blocks[1:], strict=True):
            if high > low:
                parts.append(_prepared(vectors, rows[low:high], normalise, row_names))
                release_mapped_pages(vectors)
        index.train(np.concatenate(parts))
    return index


def add_vectors(
    index,
    vectors: np.ndarray,
    *,
    normalise: bool = False,
    row_names: np.ndarray | None = None,
    chunk_rows: int = ADD_CHUNK_ROWS,
) -> None:
    """Add ``vectors`` to the trained ``index`` a chunk at a time (rows get the next positions)."""
    for start in range(0, len(vectors), chunk_rows):
        index.add(_prepared(vectors, slice(start, start + chunk_rows), normalise, row_names))
        release_mapped_pages(vectors)


def _prepared(
    vectors: np.ndarray, rows: np.ndarray | slice, normalise: bool, row_names: np.ndarray | None
) -> np.ndarray:
    block = np.asarray(vectors[rows], dtype=np.float32)
    norms = np.linalg.norm(block, axis=1)
    bad = ~np.isfinite(norms) | ((norms == 0) if normalise else False)
    if bad.any():
        positions = np.arange(len(vectors))[rows][bad]
        label, named = ("ids", row_names[positions]) if row_names is not None else ("rows", positions)
        raise DataError(
            f"{int(bad.sum())} vector(s) to index are NaN, infinite{' or zero' if normalise else ''} "
            f"(first {label}: {named[:5].tolist()}); re-embed them"
        )
    return np.ascontiguousarray(block / norms[:, None] if normalise else block)


def search(
    index, queries: np.ndarray, k: int, *, nprobe: int = 16, backend: Backend = "auto", device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query, best first; rows are positions in the index, −1 when fewer.

    ``backend``: ``faiss`` (on every GPU faiss sees, else the CPU), ``torch`` (exact, Flat indexes
    only, on ``device``) or ``auto``: faiss-gpu when installed, else torch on CUDA for a Flat index
    when torch sees a GPU, else faiss on the CPU.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    if backend == "auto":
        backend = _auto_backend(index)
    if backend == "torch":
        return exact_search_torch(_flat_vectors(index), queries, k, device=device)
    if not ivf_lists_of(index):
        return _on_gpus(index).search(queries, k)
    ivf = faiss.downcast_index(index)
    # Lists kept on disk stay there: copying them to a GPU would load them whole, which is what
    # max_memory_gb kept them on disk to avoid.
    if faiss.get_num_gpus() > 0 and not _lists_on_disk(ivf):
        gpu_index = _on_gpus(index)
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
        return gpu_index.search(queries, k)
    if _searchable_list_by_list(ivf) and _lists_on_disk(ivf) and len(queries) * nprobe >= ivf.nlist:
        return _search_list_by_list(ivf, queries, k, nprobe)
    # Search parameters, not index attributes: the cached index is never modified by a search.
    return index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))


def _lists_on_disk(ivf) -> bool:
    import faiss

    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def _searchable_list_by_list(ivf) -> bool:
    import faiss

    # The IVF types whose codes decode to vectors here; an index with a transform in front (OPQ,
    # PCA) is not one of them, and is searched as usual.
    return isinstance(ivf, (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ))


def _search_list_by_list(ivf, queries: np.ndarray, k: int, nprobe: int):
    """A batch of queries that probes most inverted lists, searched list by list: each list is read
    from the lists file once, decoded, and scored against every query that probes it.

    Searched query by query instead, a batch reads every list once per query that probes it, at
    random places in a file larger than memory: the page cache thrashes (measured at 10M vectors in
    a 5 GB memory cgroup: 1 GB/s of reads, 57% I/O wait). The scores are inner products with the
    decoded vectors (centroid + decoded residual), as ``index.search`` computes them with the same
    probes. Written here rather than with FAISS's ``big_batch_search``, which scores residual codes
    as residual · residual: right for L2, wrong for the inner product.
    """
    import faiss
    from faiss.contrib.inspect_tools import get_invlist

    _, assign = ivf.quantizer.search(queries, nprobe)
    probed = assign.ravel()
    order = np.argsort(probed, kind="stable")
    bounds = np.searchsorted(probed[order], np.arange(ivf.nlist + 1))
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    mapping = faiss.rev_swig_ptr(lists.ptr, lists.totsize).ctypes.data if lists.totsize else 0
    for step, number in enumerate(np.flatnonzero(np.diff(bounds))):
        if step % 256 == 255:  # the lists read so far leave the resident set (not the page cache)
            release_mapped_range(mapping, lists.totsize)
        ids, codes = get_invlist(ivf.invlists, int(number))
        if not len(ids):
            continue
        vectors = _decoded(ivf, codes)
        if ivf.by_residual:
            vectors += ivf.quantizer.reconstruct(int(number))
        asking = order[bounds[number] : bounds[number + 1]] // nprobe
        scores = queries[asking] @ vectors.T
        top = min(k, len(ids))
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        heap.add_result_subset(
            asking.astype(np.int64),
            np.ascontiguousarray(np.take_along_axis(scores, best, 1), dtype=np.float32),
            np.ascontiguousarray(ids[best]),
        )
    heap.finalize()
    release_mapped_range(mapping, lists.totsize)
    return heap.D, heap.I


def _decoded(ivf, codes: np.ndarray) -> np.ndarray:
    import faiss

    if isinstance(ivf, faiss.IndexIVFFlat):
        return codes.view(np.float32).reshape(len(codes), ivf.d).copy()
    quantizer = ivf.sq if isinstance(ivf, faiss.IndexIVFScalarQuantizer) else ivf.pq
    return quantizer.decode(codes)


def exact_search_torch(
    database: np.ndarray, queries: np.ndarray, k: int, *, device: str = "auto", chunk_rows: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k in torch: matmul per database chunk, then a merge of the chunks' top-k.

    The same scores and rows as a FAISS ``Flat`` index (up to float rounding among equal scores);
    it is the GPU path where faiss-gpu is not installed. Chunking bounds device memory to
    ``chunk_rows`` × d plus queries × chunk scores.
    """
    import torch

    from rebalance.core.device import resolve_device

    target = resolve_device(device)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(target)
    best_scores = torch.full((len(queries), 0), -math.inf, device=target)
    best_rows = torch.zeros((len(queries), 0), dtype=torch.int64, device=target)
    for start in range(0, len(database), chunk_rows):
        chunk = torch.from_numpy(np.ascontiguousarray(database[start : start + chunk_rows], np.float32))
        scores = q @ chunk.to(target).T
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, top.values], dim=1)
        best_rows = torch.cat([best_rows, top.indices + start], dim=1)
        merged = torch.topk(best_scores, min(k, best_scores.shape[1]), dim=1)
        best_scores, best_rows = merged.values, torch.gather(best_rows, 1, merged.indices)
    return best_scores.cpu().numpy(), best_rows.cpu().numpy()


def _auto_backend(index) -> Backend:
    import faiss
    import torch

    if faiss.get_num_gpus() == 0 and torch.cuda.is_available() and _is_flat(index):
        return "torch"
    return "faiss"


def _is_flat(index) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def _flat_vectors(index) -> np.ndarray:
    if not _is_flat(index):
        raise RebalanceError("the torch backend searches exactly and needs a Flat index; use backend: faiss")
    return index.reconstruct_n(0, index.ntotal)


_GPU_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_gpus(index):
    """``index`` on every GPU faiss sees, copied once for as long as the CPU index lives (a step's
    repeated searches, retrieval's widening rounds), else the index itself."""
    import faiss

    if faiss.get_num_gpus() == 0:
        return index
    if index not in _GPU_COPIES:
        _GPU_COPIES[index] = faiss.index_cpu_to_all_gpus(index)
    return _GPU_COPIES[index]


def _seed_clustering(index, seed: int) -> None:
    # The coarse quantizer's k-means draws its initial centroids from its own seed (1234 by
    # default); tying it to the pipeline seed keeps "same seed, same bytes" a real promise.
    import faiss

    if ivf_lists_of(index):
        faiss.extract_index_ivf(index).cp.seed = seed


def _ivf_lists(factory: str) -> int:
    for part in factory.split(","):
        if part.startswith("IVF"):
            digits = "".join(ch for ch in part[3:].split("_")[0] if ch.isdigit())
            return int(digits) if digits else 0
    return 0
