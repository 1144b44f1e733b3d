"""Precomputed embeddings in the clip-retrieval / LAION layout: ``img_emb/img_emb_<i>.npy`` (and
``text_emb/text_emb_<i>.npy``) beside ``metadata/metadata_<i>.parquet`` with the same row order,
whose ``key`` column names each row's sample. Shards are memory-mapped, never loaded whole: the
pool's vectors are a ``GatheredRows`` view over them, read when a chunk of rows is asked for."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.errors import DataError
from rebalance.io.memmaps import release_mapped_pages


def embedding_shards(root: Path, kind: str) -> list[tuple[Path, Path]]:
    """(``<kind>_emb/<kind>_emb_<i>.npy``, ``metadata/metadata_<i>.parquet``) pairs, by shard number."""
    folder = root / f"{kind}_emb"
    numbered = {
        int(found[1]): path
        for path in folder.glob(f"{kind}_emb_*.npy")
        if (found := re.fullmatch(rf"{kind}_emb_(\d+)\.npy", path.name))
    }
    if not numbered:
        raise DataError(
            f"{folder}: no {kind}_emb_<i>.npy files; expected the clip-retrieval layout "
            f"({kind}_emb/{kind}_emb_0.npy ... beside metadata/metadata_0.parquet ...)"
        )
    pairs = []
    for number in sorted(numbered):
        metadata = root / "metadata" / f"metadata_{number}.parquet"
        if not metadata.exists():
            raise DataError(
                f"{numbered[number]}: no {metadata} beside it; each embedding shard needs its metadata"
            )
        pairs.append((numbered[number], metadata))
    return pairs


def iter_embedding_shards(root: Path, kind: str) -> Iterator[tuple[Path, np.ndarray, pa.Array]]:
    """(path, vectors, keys) per shard: the vectors memory-mapped, checked against their metadata's rows."""
    for vectors_path, metadata_path in embedding_shards(root, kind):
        try:
            vectors = np.load(vectors_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise DataError(f"{vectors_path}: not a readable .npy array ({error})") from None
        if vectors.ndim != 2:
            raise DataError(f"{vectors_path}: expected a 2-D array (rows × dim), found shape {vectors.shape}")
        try:
            metadata = pq.read_table(metadata_path, columns=["key"])
        except (OSError, ValueError, KeyError) as error:
            raise DataError(
                f"{metadata_path}: cannot read its 'key' column ({str(error).splitlines()[0]})"
            ) from None
        if metadata.num_rows != len(vectors):
            raise DataError(
                f"{vectors_path} has {len(vectors):,} rows but {metadata_path} has {metadata.num_rows:,}; "
                "they must be the same rows in the same order (re-export the shard)"
            )
        yield vectors_path, vectors, metadata["key"].cast(pa.string()).combine_chunks()


class GatheredRows:
    """Rows of several memory-mapped shards, in the order a pool lists them, read only when sliced.

    Row ``i`` is row ``row_in_shard[i]`` of ``shards[shard_of_row[i]]``. It stands in for the
    pool's vectors (``shape``, ``dtype``, ``len`` and row slicing, as ``np.asarray`` callers and
    ``save_rows`` use them), because a copy would need the whole pool in memory: 10 M × 512 float16
    is 10 GB. Written by hand: numpy has no lazy gather over several files.
    """

    def __init__(self, shards: list[np.ndarray], shard_of_row: np.ndarray, row_in_shard: np.ndarray, dtype):
        self.shards, self.shard_of_row, self.row_in_shard = shards, shard_of_row, row_in_shard
        self.dtype = np.dtype(dtype)
        self.shape = (len(shard_of_row), shards[0].shape[1] if shards else 0)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        wanted = np.arange(self.shape[0])[rows]
        block = np.empty((len(wanted), self.shape[1]), dtype=self.dtype)
        shard_of_row = self.shard_of_row[wanted]
        for number in np.unique(shard_of_row):
            here = shard_of_row == number
            shard = self.shards[number]
            block[here] = shard[self.row_in_shard[wanted[here]]]
            release_mapped_pages(shard)
        return block
