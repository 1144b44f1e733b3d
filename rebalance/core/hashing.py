"""Content hashes of input files and folders, memoised by (path, size, mtime, inode).

Keys depend on file contents, not on names or timestamps. Hashing a large image folder is paid
once: later runs only ``stat`` each file and reuse the digest from a small SQLite memo in the cache
folder (the scheme DVC uses), re-reading a file only when its stat signature changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def stable_hash(payload: Any) -> str:
    """SHA-256 of the canonical JSON of ``payload`` (sorted keys; paths and others as ``str``)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ContentHasher:
    """Hash files and folders by content, with a persistent stat-keyed memo."""

    def __init__(self, memo_path: Path):
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(memo_path, timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, signature TEXT, digest TEXT)"
        )

    def close(self) -> None:
        self._db.commit()
        self._db.close()

    def __enter__(self) -> ContentHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hash_path(self, path: Path) -> str:
        """Digest of a file's bytes, or of a folder's sorted (relative path, file digest) pairs."""
        if path.is_dir():
            digest = hashlib.sha256()
            for file in sorted(_walk_files(path)):
                relative = file.relative_to(path).as_posix()
                digest.update(f"{relative}\0{self._hash_file(file)}\n".encode())
            return digest.hexdigest()
        return self._hash_file(path)

    def _hash_file(self, path: Path) -> str:
        stat = path.stat()
        signature = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
        key = str(path.resolve())
        row = self._db.execute("SELECT signature, digest FROM digests WHERE path = ?", (key,)).fetchone()
        if row and row[0] == signature:
            return row[1]
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        self._db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (key, signature, digest))
        return digest


def _walk_files(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(folder) / name
