"""Releasing memory-mapped pages: they leave the resident set (RssFile) and the data stays."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from rebalance.io.memmaps import release_file_mappings, release_mapped_pages

SIZE = 32 << 20


def resident_file_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:")) / 1024


pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def test_release_file_mappings_drops_a_native_mapping_found_by_path(tmp_path: Path) -> None:
    path = tmp_path / "lists.bin"
    path.write_bytes(np.arange(SIZE // 8, dtype=np.int64).tobytes())
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        before = resident_file_mb()
        view = np.frombuffer(mapped, dtype=np.int64)
        total = int(view.sum())  # touches every page
        assert resident_file_mb() - before > 24
        release_file_mappings([tmp_path / "." / "lists.bin"])  # any spelling of the path
        assert resident_file_mb() - before < 4
        assert int(view.sum()) == total  # the data is still there, read back from the page cache
        del view


def test_release_mapped_pages_drops_a_numpy_memmap(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.ones((SIZE // 4 // 64, 64), dtype=np.float32))
    rows = np.load(tmp_path / "rows.npy", mmap_mode="r")
    before = resident_file_mb()
    assert float(rows.sum()) == rows.size
    assert resident_file_mb() - before > 24
    release_mapped_pages(rows)
    assert resident_file_mb() - before < 4
