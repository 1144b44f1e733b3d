"""Arrays larger than memory: read and write them a chunk at a time, without their pages piling up
in the process's resident set."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import numpy as np

CHUNK_ROWS = 1 << 16


def release_mapped_pages(array) -> None:
    """Drop the pages of the memory-mapped file behind ``array`` (a ``np.memmap`` or a view of one)
    from this process's resident set; a no-op for arrays in memory.

    Pages of a mapped file that were read stay resident until unmapped; dropping them after each
    chunk keeps a pass over a file larger than RAM from filling it (they stay in the page cache, so
    nothing is read twice unless memory is short).
    """
    mapped = getattr(array, "base", None)
    while mapped is not None and not isinstance(mapped, mmap.mmap):
        mapped = getattr(mapped, "base", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def release_mapped_range(address: int, size: int) -> None:
    """``release_mapped_pages`` for a file mapping owned by native code (FAISS's on-disk inverted
    lists): its ``size`` bytes from ``address`` (the start of the mapping) leave this process's
    resident set and stay in the page cache."""
    if size and hasattr(mmap, "MADV_DONTNEED"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(size), mmap.MADV_DONTNEED)


def release_file_mappings(paths) -> None:
    """``release_mapped_range`` for every mapping of the files ``paths`` in this process, found in
    ``/proc/self/maps``: for files native code mapped without saying where (FAISS's
    ``IO_FLAG_MMAP``). A no-op where there is no ``/proc``."""
    wanted = {str(Path(path).resolve()) for path in paths}
    try:
        with open("/proc/self/maps") as maps:
            regions = [line.split(maxsplit=5) for line in maps]
    except OSError:
        return
    for fields in regions:
        if len(fields) == 6 and fields[5].rstrip("\n") in wanted:
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            release_mapped_range(start, end - start)


def save_rows(path: Path, rows, chunk_rows: int = CHUNK_ROWS) -> None:
    """Write ``rows`` (an array, a memory map, or anything with ``shape``, ``dtype`` and row
    slicing) as the ``.npy`` file ``np.save`` would write, ``chunk_rows`` rows at a time."""
    dtype = np.dtype(rows.dtype)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(rows.shape),
    }
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, rows.shape[0], chunk_rows):
            handle.write(np.ascontiguousarray(rows[start : start + chunk_rows], dtype=dtype).tobytes())
            release_mapped_pages(rows)
