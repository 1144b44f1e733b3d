"""Vectors: ``Embeddings`` keyed by image id, and the FAISS ``VectorIndex`` over them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Self

import numpy as np

from rebalance.core.artifact import positions_of
from rebalance.errors import DataError
from rebalance.io.memmaps import release_mapped_pages, save_rows


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32: inner products become cosines."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """One vector per image: ``ids`` (image ids, int64) aligned with ``vectors`` (n × d; an array,
    a memory map, or rows gathered lazily from precomputed shards).

    ``encoder`` names what produced them (e.g. ``pixels_pca``), so every figure downstream can say
    which representation it was computed on.
    """

    ids: np.ndarray
    vectors: np.ndarray
    encoder: str

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    def write(self, directory: Path) -> None:
        np.save(directory / "ids.npy", self.ids)
        save_rows(directory / "vectors.npy", self.vectors)  # a memory map or gathered view: by chunks
        (directory / "meta.json").write_text(
            json.dumps({"encoder": self.encoder, "dim": int(self.vectors.shape[1])})
        )

    @classmethod
    def read(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        return cls(
            np.load(directory / "ids.npy"), np.load(directory / "vectors.npy", mmap_mode="r"), meta["encoder"]
        )

    def shard(self, index: int, num_shards: int) -> Self:
        size = math.ceil(self.num_rows / num_shards)
        rows = slice(index * size, (index + 1) * size)
        # A view of the memory map, not a copy: a shard of a large pool is read a chunk at a time.
        return dataclasses.replace(self, ids=self.ids[rows], vectors=self.vectors[rows])

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        # An empty shard's vectors may lack the dim (its encoder never ran): skip it.
        filled = [p for p in parts if p.num_rows] or parts[:1]
        return cls(
            np.concatenate([p.ids for p in filled]),
            np.concatenate([p.vectors for p in filled]),
            parts[0].encoder,
        )

    def aligned_to(self, image_ids: np.ndarray) -> np.ndarray:
        """Vectors in the order of ``image_ids``; every id must have a vector."""
        rows, missing = positions_of(self.ids, image_ids)
        if len(missing):
            raise DataError(
                f"{len(missing)} image(s) have no embedding (first ids: {missing[:5].tolist()}); embed the same dataset"
            )
        return np.asarray(self.vectors[rows])


ON_DISK_LISTS = "index.ivfdata"

MMAP_INDEX_BYTES = 1 << 30
"""Index files larger than this are memory-mapped read-only (searching needs only the lists it
probes); smaller ones load into memory, where they can also be cloned and merged."""


@dataclasses.dataclass(frozen=True)
class VectorIndex:
    """A FAISS index over ``ids`` (image ids of the pool, in index-row order) with its settings.

    ``meta`` records the factory string, the encoder of the vectors, their count and dim, the
    default ``nprobe`` and the build's memory cap (``max_memory_gb``). On disk: ``index.faiss``
    (``faiss.write_index``; read back memory-mapped when it is large and the index type allows it),
    ``ids.npy`` and ``meta.json``, plus ``index.ivfdata`` when the inverted lists were merged on
    disk because they exceed the cap (``write_concatenated``).
    """

    index: Any  # a CPU faiss.Index; faiss is imported lazily
    ids: np.ndarray
    meta: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def encoder(self) -> str:
        return self.meta["encoder"]

    def write(self, directory: Path) -> None:
        np.save(directory / "ids.npy", self.ids)
        self._write_index_and_meta(directory)

    def _write_index_and_meta(self, directory: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(directory / "index.faiss"))
        (directory / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> Self:
        import faiss

        path = directory / "index.faiss"
        if (directory / ON_DISK_LISTS).exists():
            # The lists stay in their file, found beside the index wherever the folder now is.
            index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        elif path.stat().st_size > MMAP_INDEX_BYTES:
            index = _mapped_index(path)
        else:
            index = faiss.read_index(str(path))
        # Memory-mapped: at 400M vectors the ids alone are 3.2 GB, and a search reads a few of them.
        ids = np.load(directory / "ids.npy", mmap_mode="r")
        return cls(index, ids, json.loads((directory / "meta.json").read_text()))

    @classmethod
    def write_concatenated(cls, part_dirs: list[Path], directory: Path) -> int:
        """Write the parts' concatenation into ``directory`` and return its rows: merged in memory
        while the merged vectors fit the build's cap (``max_memory_gb``), else merged list by list
        into ``index.ivfdata``, which is memory-mapped when searched and never loaded whole."""

        from rebalance.io import faiss_files as vector_index

        # The first part's structure, its lists left in its file: a part can be larger than the
        # memory left, and loading it (and cloning it to get an empty index) would hold it twice.
        first = _mapped_index(part_dirs[0] / "index.faiss")
        meta = json.loads((part_dirs[0] / "meta.json").read_text())
        counts = [len(np.load(part / "ids.npy", mmap_mode="r")) for part in part_dirs]
        merged_bytes = sum(counts) * vector_index.bytes_per_vector(first)
        cap_bytes = meta.get("max_memory_gb", math.inf) * 2**30
        if not vector_index.is_ivf(first) or merged_bytes <= cap_bytes:
            merged = cls.concat([cls.read(part) for part in part_dirs])
            merged.write(directory)
            return merged.num_rows
        vector_index.drop_lists(first)  # now the trained index the parts were filled from
        filled = [part / "index.faiss" for part, count in zip(part_dirs, counts, strict=True) if count]
        index = vector_index.merge_on_disk(first, filled, directory / ON_DISK_LISTS)
        # The ids are concatenated into their file a part at a time, never all in memory.
        ids = np.lib.format.open_memmap(
            directory / "ids.npy", mode="w+", dtype=np.int64, shape=(sum(counts),)
        )
        for part, start, count in zip(part_dirs, np.cumsum([0, *counts[:-1]]).tolist(), counts, strict=True):
            ids[start : start + count] = np.load(part / "ids.npy", mmap_mode="r")
            release_mapped_pages(ids)
        ids.flush()
        cls(index, ids, {**meta, "vectors": len(ids), "lists_on_disk": True})._write_index_and_meta(directory)
        return len(ids)

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        """The parts (filled from one trained index) merged in order."""
        from rebalance.io.faiss_files import merge_indexes

        filled = [part for part in parts if part.num_rows] or parts[:1]
        ids = np.concatenate([part.ids for part in filled])
        return cls(
            merge_indexes([part.index for part in filled]), ids, {**filled[0].meta, "vectors": len(ids)}
        )


def _mapped_index(path: Path):
    """The index file ``path`` memory-mapped read-only; loaded into memory for the index types
    FAISS cannot map."""
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path))
