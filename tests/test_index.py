from __future__ import annotations

import faiss
import numpy as np
import pytest

from rebalance.errors import DataError, RebalanceError
from rebalance.methods import index as vector_index
from rebalance.methods.index import (
    auto_factory,
    build_index,
    exact_search_torch,
    search,
    training_sample_size,
)


def unit_rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_auto_factory_picks_by_pool_size() -> None:
    assert auto_factory(50_000, 512) == "Flat"
    # 4·√200000 = 1789 -> nearest power of two 2048; 200k × 512 × 4 B = 0.4 GB fits in memory.
    assert auto_factory(200_000, 512) == "IVF2048,Flat"
    # 10⁸ × 512 × 4 B = 205 GB does not: PQ with 64 one-byte codes a vector.
    assert auto_factory(100_000_000, 512) == "IVF32768,PQ64"
    assert auto_factory(100_000_000, 96, max_memory_bytes=1) == "IVF32768,PQ48"
    assert training_sample_size("IVF2048,Flat", 10**6) == 40 * 2048
    assert training_sample_size("IVF64,PQ8", 10**6) == 65_536
    assert training_sample_size("Flat", 10) == 10


def test_torch_exact_search_equals_faiss_flat() -> None:
    database, queries = unit_rows(5_000, 24), unit_rows(7, 24, seed=1)
    index = build_index(database, "Flat")
    scores, rows = search(index, queries, 10, backend="faiss")
    torch_scores, torch_rows = exact_search_torch(database, queries, 10, device="cpu", chunk_rows=999)
    assert np.array_equal(rows, torch_rows)
    np.testing.assert_allclose(scores, torch_scores, atol=1e-5)
    # The search picks the same answer through the public entry point.
    assert np.array_equal(search(index, queries, 10, backend="torch", device="cpu")[1], rows)


def test_ivf_index_is_deterministic_and_searching_does_not_change_it() -> None:
    database = unit_rows(60_000, 16)
    first, second = build_index(database, "IVF64,Flat", seed=3), build_index(database, "IVF64,Flat", seed=3)
    saved = faiss.serialize_index(first)
    assert np.array_equal(saved, faiss.serialize_index(second))
    _, rows = search(first, database[:20], 1, nprobe=64)
    assert rows[:, 0].tolist() == list(range(20))  # with every list probed, IVF-Flat is exact
    assert np.array_equal(saved, faiss.serialize_index(first))


def test_bad_vectors_and_factories_are_clear_errors() -> None:
    database = unit_rows(100, 8)
    database[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        build_index(database, "Flat")
    with pytest.raises(RebalanceError, match="faiss cannot build the index 'Bogus'"):
        build_index(unit_rows(100, 8), "Bogus")
    with pytest.raises(DataError, match="needs at least 256 vectors"):
        build_index(unit_rows(100, 8), "IVF256,Flat")
    with pytest.raises(RebalanceError, match="needs a Flat index"):
        search(build_index(unit_rows(3_000, 8), "IVF16,Flat"), unit_rows(2, 8), 3, backend="torch")


def test_k_larger_than_the_pool_returns_the_whole_pool() -> None:
    index = build_index(unit_rows(5, 8), "Flat")
    scores, rows = search(index, unit_rows(2, 8, seed=4), 50)
    assert rows.shape == (2, 5) and sorted(rows[0]) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_a_float16_memory_map_is_indexed_chunk_by_chunk_as_if_whole(tmp_path) -> None:
    import faiss

    raw = (unit_rows(3_000, 16, seed=5) * 3).astype(np.float16)  # not unit length: normalised as read
    np.save(tmp_path / "pool.npy", raw)
    mapped = np.load(tmp_path / "pool.npy", mmap_mode="r")
    whole = raw.astype(np.float32)
    whole /= np.linalg.norm(whole, axis=1, keepdims=True)
    for factory in ("Flat", "IVF16,PQ4"):
        chunked = build_index(mapped, factory, seed=2, normalise=True, chunk_rows=700)
        at_once = build_index(whole, factory, seed=2, chunk_rows=len(whole))
        assert np.array_equal(faiss.serialize_index(chunked), faiss.serialize_index(at_once))
    mapped_copy = np.array(mapped)
    mapped_copy[1234] = 0
    with pytest.raises(
        DataError, match=r"1 vector\(s\) to index are NaN, infinite or zero \(first rows: \[1234\]\)"
    ):
        build_index(mapped_copy, "Flat", normalise=True, chunk_rows=700)


def test_an_index_filled_in_parts_and_merged_is_the_index_built_at_once() -> None:
    import faiss

    from rebalance.methods.index import add_vectors, merge_indexes, train_index

    database = unit_rows(4_000, 16, seed=6)
    for factory in ("Flat", "IVF32,Flat", "IVF32,PQ4"):
        trained = train_index(database, factory, seed=1)
        parts = []
        for rows in np.array_split(np.arange(len(database)), 3):
            part = faiss.clone_index(trained)
            add_vectors(part, database[rows])
            parts.append(part)
        merged = merge_indexes(parts)
        at_once = build_index(database, factory, seed=1)
        assert merged.ntotal == len(database)
        assert np.array_equal(faiss.serialize_index(merged), faiss.serialize_index(at_once)), factory
    with pytest.raises(RebalanceError, match="cannot be built in shards"):
        merge_indexes([build_index(database[:100], "HNSW8"), build_index(database[100:200], "HNSW8")])


@pytest.mark.slow
@pytest.mark.cluster
def test_the_index_trained_once_and_filled_on_a_local_cluster_searches_like_one_built_at_once(
    tmp_path,
) -> None:
    import faiss

    from rebalance import api
    from rebalance.domain.artifacts import VectorIndex
    from tests.helpers import REPO

    pool = REPO / "data" / "fashion_mnist_lt" / "pool"
    pipeline = tmp_path / "index.yaml"
    pipeline.write_text(
        "steps:\n"
        f"  pool: {{step: ingest_pool, root: {pool}}}\n"
        "  vectors: {step: embed_pixels_pca, inputs: {dataset: pool}}\n"
        "  trained: {step: train_index, inputs: {embeddings: vectors}, factory: 'IVF16,PQ8'}\n"
        "  sharded: {step: fill_index, inputs: {embeddings: vectors, trained: trained}}\n"
        "  whole: {step: build_index, inputs: {embeddings: vectors}, factory: 'IVF16,PQ8'}\n"
    )
    run = api.run(
        pipeline,
        [
            f"cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'out'}",
            "executor.kind=dask",
            "executor.n_workers=2",
            "executor.shard_rows=300",
        ],
    )
    assert (
        run.manifest["executor"].startswith("dask")
        and next(s for s in run.manifest["steps"] if s["id"] == "sharded")["shards"]["total"] == 7
    )
    sharded, whole = (
        VectorIndex.read(tmp_path / "out" / "sharded"),
        VectorIndex.read(tmp_path / "out" / "whole"),
    )
    assert np.array_equal(sharded.ids, whole.ids) and sharded.index.ntotal == 2_000
    assert np.array_equal(faiss.serialize_index(sharded.index), faiss.serialize_index(whole.index))
    queries = unit_rows(20, whole.index.d, seed=9)
    assert np.array_equal(search(sharded.index, queries, 10)[1], search(whole.index, queries, 10)[1])


def _index_pipeline(tmp_path, max_memory_gb: float):
    from tests.helpers import REPO

    pool = REPO / "data" / "fashion_mnist_lt" / "pool"
    pipeline = tmp_path / "index.yaml"
    pipeline.write_text(
        "executor: {kind: local, shard_rows: 300}\n"
        "steps:\n"
        f"  pool: {{step: ingest_pool, root: {pool}}}\n"
        "  vectors: {step: embed_pixels_pca, inputs: {dataset: pool}}\n"
        f"  trained: {{step: train_index, inputs: {{embeddings: vectors}}, factory: 'IVF16,Flat', max_memory_gb: {max_memory_gb}}}\n"
        "  sharded: {step: fill_index, inputs: {embeddings: vectors, trained: trained}}\n"
        "  whole: {step: build_index, inputs: {embeddings: vectors}, factory: 'IVF16,Flat'}\n"
    )
    return pipeline


def test_lists_larger_than_the_cap_are_merged_on_disk_and_search_like_the_index_built_at_once(
    tmp_path, monkeypatch
) -> None:
    import shutil

    from rebalance import api
    from rebalance.domain.artifacts import VectorIndex

    # 2,000 vectors × (64 dims × 4 bytes + an 8-byte id) = 528 kB of lists, over a 0.1 MiB cap.
    pipeline = _index_pipeline(tmp_path, max_memory_gb=0.0001)
    dirs = lambda name: [f"cache_dir={tmp_path / name / 'cache'}", f"output_dir={tmp_path / name / 'out'}"]  # noqa: E731
    api.run(pipeline, dirs("first"))
    sharded = VectorIndex.read(tmp_path / "first" / "out" / "sharded")
    whole = VectorIndex.read(tmp_path / "first" / "out" / "whole")
    lists = faiss.extract_index_ivf(sharded.index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)
    assert (
        sharded.meta["lists_on_disk"] and (tmp_path / "first" / "out" / "sharded" / "index.ivfdata").is_file()
    )
    assert not (tmp_path / "first" / "out" / "whole" / "index.ivfdata").exists()
    assert np.array_equal(sharded.ids, whole.ids) and sharded.index.ntotal == whole.index.ntotal == 2_000
    queries = unit_rows(30, whole.index.d, seed=9)
    list_by_list = []
    monkeypatch.setattr(
        vector_index,
        "_search_list_by_list",
        lambda *args, real=vector_index._search_list_by_list: list_by_list.append(1) or real(*args),
    )
    # 3 queries × 1 probe read few of the 16 lists: searched query by query; batches that probe
    # every list at least once on average are searched list by list. Both equal the in-memory index.
    for count, nprobe in ((3, 1), (30, 1), (30, 4), (30, 16)):
        on_disk, in_memory = (
            search(sharded.index, queries[:count], 10, nprobe=nprobe),
            search(whole.index, queries[:count], 10, nprobe=nprobe),
        )
        assert np.array_equal(on_disk[1], in_memory[1]) and np.allclose(on_disk[0], in_memory[0])
    assert len(list_by_list) == 3

    # The same config gives the same bytes, and a moved cache still serves the index from its new place.
    api.run(pipeline, dirs("second"))
    for name in ("index.faiss", "index.ivfdata", "ids.npy"):
        first_bytes = (tmp_path / "first" / "out" / "sharded" / name).read_bytes()
        assert first_bytes == (tmp_path / "second" / "out" / "sharded" / name).read_bytes(), name
    shutil.move(tmp_path / "first", tmp_path / "moved")
    moved = api.run(pipeline, dirs("moved"))
    assert moved.executed == []
    again = VectorIndex.read(tmp_path / "moved" / "out" / "sharded")
    assert np.array_equal(search(again.index, queries, 10)[1], search(whole.index, queries, 10)[1])


def test_an_index_build_killed_with_kill_9_resumes_with_its_finished_shards(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    from rebalance import api
    from rebalance.domain.artifacts import VectorIndex
    from tests.helpers import REPO

    pipeline = _index_pipeline(tmp_path, max_memory_gb=8)
    dirs = [f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}"]
    # The child kills itself with SIGKILL as it starts filling the fourth of seven shards: a
    # deterministic point in the middle of the build, with three shards finished.
    script = (
        "import os, signal, sys\n"
        "from rebalance.methods import index\n"
        "real, calls = index.add_vectors, []\n"
        "def add_then_die(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*args, **kwargs)\n"
        "index.add_vectors = add_then_die\n"
        "from rebalance import api\n"
        "api.run(sys.argv[1], sys.argv[2:])\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(pipeline), *dirs], cwd=REPO, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not any((tmp_path / "cache" / "fill_index").glob("*/_COMPLETE.json"))

    resumed = api.run(pipeline, dirs)
    step = next(s for s in resumed.manifest["steps"] if s["id"] == "sharded")
    assert step["cache"] == "miss" and (step["shards"]["total"], step["shards"]["reused"]) == (7, 3)
    sharded = VectorIndex.read(tmp_path / "out" / "sharded")
    whole = VectorIndex.read(tmp_path / "out" / "whole")
    assert np.array_equal(faiss.serialize_index(sharded.index), faiss.serialize_index(whole.index))


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,SQ8", "IVF32,PQ8x4"])
def test_list_by_list_search_equals_faiss_search_for_residual_codes_too(tmp_path, factory) -> None:
    # SQ and PQ codes are residuals from the list's centroid: the inner product must be taken with
    # centroid + residual (faiss's big_batch_search scores residual · residual, right only for L2).
    import faiss

    from rebalance.methods.index import _search_list_by_list, merge_on_disk

    vectors, queries = unit_rows(6_000, 32, seed=3), unit_rows(200, 32, seed=4)
    trained = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    trained.train(vectors)
    parts = []
    for number, rows in enumerate((vectors[:2_500], vectors[2_500:])):
        part = faiss.clone_index(trained)
        part.add(rows)
        faiss.write_index(part, str(tmp_path / f"part-{number}.faiss"))
        parts.append(tmp_path / f"part-{number}.faiss")
    merged = merge_on_disk(trained, parts, tmp_path / "index.ivfdata")
    expected = merged.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=8))
    found = _search_list_by_list(faiss.downcast_index(merged), queries, 10, 8)
    assert np.array_equal(found[1], expected[1]) and np.allclose(found[0], expected[0], atol=1e-5)
