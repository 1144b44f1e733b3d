"""FAISS index files: merge shards built from one trained index, in memory or list by list on disk.

``rebalance.methods.index`` builds and searches indexes; this module holds what the stored index
artifact (``rebalance.domain.artifacts.VectorIndex``) needs to combine the parts a sharded build
wrote, so that the artifact layer never imports the method layer. The on-disk merge follows
autofaiss's ``indices/distributed.py`` (merge inverted lists into one ``OnDiskInvertedLists``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rebalance.errors import RebalanceError
from rebalance.io.memmaps import release_file_mappings


def merge_indexes(parts: list):
    """One index holding every part's vectors in order: the parts share one trained index (IVF
    lists, PQ codebooks), so this is the index ``add_vectors`` would have built from all of them."""
    import faiss

    try:
        merged = faiss.clone_index(parts[0])
        for part in parts[1:]:
            other = faiss.clone_index(part)  # merge_from empties its argument; the part stays intact
            # IVF ids are positions: the next part's start where they are explicit, none for flat codes.
            merged.merge_from(other, merged.ntotal if ivf_lists_of(merged) else 0)
    except RuntimeError as error:
        raise RebalanceError(
            f"this index cannot be built in shards ({first_line(error)}); use build_index, or "
            "smaller shards (executor.shard_rows) when a part is too large to load"
        ) from None
    return merged


def merge_on_disk(trained, part_paths: list[Path], lists_path: Path):
    """``trained`` (an empty IVF index) holding every part's vectors in order, its inverted lists in
    the file ``lists_path`` instead of memory (``faiss.OnDiskInvertedLists``): the parts are read
    memory-mapped and copied list by list, so neither they nor the merged codes are ever loaded
    whole. The same search results as ``merge_indexes``; searching maps only the probed lists.

    The index records the lists file by its name only: read it back with
    ``faiss.IO_FLAG_ONDISK_SAME_DIR`` from the folder holding both.
    """
    import faiss

    merged = faiss.clone_index(trained)
    if merged.ntotal:
        raise ValueError("merge_on_disk fills an empty trained index")
    ivf = faiss.extract_index_ivf(merged)
    # Kept referenced until the merge is done: each part owns the lists being copied.
    parts = [faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) for path in part_paths]
    part_lists = [faiss.extract_index_ivf(part).invlists for part in parts]
    sizes = np.array(
        [[lists.list_size(number) for number in range(ivf.nlist)] for lists in part_lists], np.uint64
    )
    # Each part numbered its rows from 0; merged, they follow the previous parts' rows.
    starts = np.cumsum([0, *sizes.sum(axis=1)[:-1].tolist()], dtype=np.int64)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    # The layout FAISS's merge_from_multiple writes (lists in order, each part's entries after the
    # previous part's), copied here list by list because that one call cannot release what it has
    # read and written: the mapped pages of the parts and of the lists file would all stay resident.
    # It also shifts ids wrongly for parts of unequal sizes (faiss 1.15: off by 2 on 7 parts).
    merged_sizes = np.ascontiguousarray(sizes.sum(axis=0))
    lists.update_totsize(int(merged_sizes.sum()) * (8 + ivf.code_size))  # ids are 8-byte idx_t
    lists.set_all_lists_sizes(faiss.swig_ptr(merged_sizes))
    mapped = [*part_paths, lists_path]
    for number in range(ivf.nlist):
        filled = 0
        for source, start in zip(part_lists, starts.tolist(), strict=True):
            count = source.list_size(number)
            if count:
                ids = faiss.rev_swig_ptr(source.get_ids(number), count) + start
                lists.update_entries(number, filled, count, faiss.swig_ptr(ids), source.get_codes(number))
                filled += count
        if number % 256 == 255:
            release_file_mappings(mapped)
    release_file_mappings(mapped)
    merged.ntotal = ivf.ntotal = int(merged_sizes.sum())
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns the lists now
    # A bare name, not the temporary path it was written under: the index file's bytes depend on
    # its contents alone, and the folder can be moved.
    lists.filename = lists_path.name
    return merged


def drop_lists(index) -> None:
    """Empty the trained IVF ``index`` in place, its lists replaced by empty ones without reading
    them (``faiss.Index.reset`` would touch every list; a clone would copy every code)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index owns the empty lists now
    index.ntotal = ivf.ntotal = 0


def bytes_per_vector(index) -> int:
    """Bytes one stored vector takes in ``index``: its code, plus an 8-byte id in IVF lists."""
    import faiss

    if ivf_lists_of(index):
        return faiss.extract_index_ivf(index).code_size + 8
    return getattr(faiss.downcast_index(index), "code_size", 4 * index.d)


def is_ivf(index) -> bool:
    return bool(ivf_lists_of(index))


def ivf_lists_of(index) -> int:
    import faiss

    try:
        return faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return 0


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
