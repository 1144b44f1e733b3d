"""Atomic, durable file-system writes: temp → fsync → rename.

A reader (or a run resumed after ``kill -9``) sees either the previous state or the complete new one,
never a half-written file or folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root`` itself) to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


# Temps carry host and pid so that a stale temp of a dead local process can be told apart from a
# live one written by a dask worker on another host sharing the cache folder.
_HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temp_sibling(final: Path) -> Path:
    """A unique temp path beside ``final``."""
    return final.with_name(f".tmp-{final.name}-{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp folder; on success it is flushed and renamed to ``final``.

    If ``final`` already exists it is replaced. On error the temp folder is removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(final)
    temp.mkdir()
    try:
        yield temp
        fsync_tree(temp)
        if final.exists():
            # Two-step swap: POSIX rename cannot replace a non-empty folder.
            old = temp_sibling(final)
            final.rename(old)
            temp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            temp.rename(final)
        _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_path(path.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def remove_stale_temps(folder: Path, prefix: str) -> int:
    """Remove temp siblings ``.tmp-<prefix>*`` left by processes of this host that no longer run."""
    removed = 0
    if not folder.is_dir():
        return removed
    for temp in folder.glob(f".tmp-{prefix}*"):
        pid = _pid_of_temp(temp)
        if pid is not None and not _pid_alive(pid):
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
            removed += 1
    return removed


def _pid_of_temp(temp: Path) -> int | None:
    parts = temp.name.rsplit("-", 3)
    if len(parts) == 4 and parts[1] == _HOST_TAG and parts[2].isdigit():
        return int(parts[2])
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
