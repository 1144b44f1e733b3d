from __future__ import annotations

import hashlib
from pathlib import Path

from rebalance.core.hashing import ContentHasher, stable_hash


def test_folder_hash_follows_content_not_timestamps(tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "a.bin").write_bytes(b"abc")
    with ContentHasher(tmp_path / "memo.sqlite") as hasher:
        first = hasher.hash_path(tmp_path / "d")
        assert hasher.hash_path(tmp_path / "d" / "x" / "a.bin") == hashlib.sha256(b"abc").hexdigest()
        (tmp_path / "d" / "x" / "a.bin").write_bytes(b"abc")
        assert hasher.hash_path(tmp_path / "d") == first
        (tmp_path / "d" / "x" / "a.bin").write_bytes(b"abd")
        assert hasher.hash_path(tmp_path / "d") != first
        (tmp_path / "d" / "x" / "a.bin").write_bytes(b"abc")
        (tmp_path / "d" / "x" / "a.bin").rename(tmp_path / "d" / "x" / "b.bin")
        assert hasher.hash_path(tmp_path / "d") != first  # names are part of a folder's content


def test_memo_is_reused_across_hashers(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    with ContentHasher(tmp_path / "memo.sqlite") as hasher:
        digest = hasher.hash_path(tmp_path / "f")
    with ContentHasher(tmp_path / "memo.sqlite") as hasher:
        row = hasher._db.execute("SELECT digest FROM digests").fetchone()
        assert row == (digest,) and hasher.hash_path(tmp_path / "f") == digest


def test_stable_hash_ignores_key_order() -> None:
    assert stable_hash({"a": 1, "b": [Path("x")]}) == stable_hash({"b": ["x"], "a": 1})
