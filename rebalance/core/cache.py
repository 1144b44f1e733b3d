"""The content-addressed step cache.

Layout under the cache root::

    <step name>/<key>/                 a finished artifact; ``_COMPLETE.json`` inside it
    <step name>/<key>.shards-<n>/<i>/  finished shards of a sharded step, each with its marker
    <step name>/<key>.kept.json        `rebalance cache keep`: serve the entry of another key
    <step name>/.tmp-<key>-...         work in progress (removed when its process is gone)
    .hashes.sqlite                     memo of input file digests

Every folder appears by atomic rename after its contents and marker are on disk, so a folder that
exists is complete, and a run killed at any moment leaves only temps behind. The marker records the
SHA-256 of every file of the entry, so ``verify`` can tell a later corruption (a flipped byte, a
truncated file) from a complete entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from rebalance.core.artifact import Artifact
from rebalance.core.fs import atomic_dir, remove_stale_temps, write_json_atomic

MARKER = "_COMPLETE.json"
KEPT_SUFFIX = ".kept.json"


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    step: str
    key: str
    path: Path
    bytes: int
    rows: int | None
    complete: bool


@dataclasses.dataclass(frozen=True)
class EntryCheck:
    """What ``Cache.verify`` found in one folder of the cache."""

    entry: CacheEntry
    state: Literal["ok", "corrupt", "partial", "unverified"]
    problems: tuple[str, ...] = ()


def write_entry(folder: Path, artifact: Artifact, info: dict[str, Any]) -> None:
    """Write ``artifact`` and its completion marker into ``folder``, atomically."""
    remove_stale_temps(folder.parent, folder.name)
    with atomic_dir(folder) as temp:
        artifact.write(temp)
        _write_marker(temp, {**info, "rows": artifact.num_rows})


def write_concatenated(
    folder: Path, artifact_type: type, part_dirs: list[Path], info: dict[str, Any]
) -> None:
    """Write the concatenation of the artifacts in ``part_dirs`` into ``folder``, atomically: by
    the type's own ``write_concatenated`` where it has one (one that would not fit in memory
    whole, like an index whose lists go to disk), else read, ``concat`` and ``write``."""
    remove_stale_temps(folder.parent, folder.name)
    with atomic_dir(folder) as temp:
        if hasattr(artifact_type, "write_concatenated"):
            rows = artifact_type.write_concatenated(part_dirs, temp)
        else:
            merged = artifact_type.concat([artifact_type.read(part) for part in part_dirs])
            merged.write(temp)
            rows = merged.num_rows
        _write_marker(temp, {**info, "rows": rows})


def _write_marker(folder: Path, info: dict[str, Any]) -> None:
    (folder / MARKER).write_text(json.dumps({**info, "files": file_digests(folder)}, sort_keys=True))


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (the marker excepted), by relative path."""
    digests = {}
    for path in sorted(_files(folder)):
        relative = path.relative_to(folder).as_posix()
        if relative != MARKER:
            with open(path, "rb") as handle:
                digests[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def _files(folder: Path) -> Iterator[Path]:
    for parent, _, names in os.walk(folder):
        for name in names:
            yield Path(parent) / name


def read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


class Cache:
    def __init__(self, root: Path):
        self.root = root

    def entry_dir(self, step: str, key: str) -> Path:
        return self.root / step / key

    def shard_dir(self, step: str, key: str, num_shards: int, index: int) -> Path:
        return self.root / step / f"{key}.shards-{num_shards}" / f"{index:05d}"

    def has(self, step: str, key: str) -> bool:
        """Whether the entry is complete (``cleared_sources`` says whether it can still be served)."""
        return (self.entry_dir(step, key) / MARKER).is_file()

    def cleared_sources(self, step: str, key: str) -> list[str]:
        """The other entries whose files this entry's rows point to (listed as ``cache_entries`` in
        its ``meta.json``) that are gone: the entry must be recomputed, not served."""
        meta = self.entry_dir(step, key) / "meta.json"
        try:
            sources = json.loads(meta.read_text()).get("cache_entries", [])
        except (OSError, ValueError):
            return []
        folder = self.entry_dir(step, key)
        return [source for source in sources if not (folder / source / MARKER).is_file()]

    def kept(self, step: str, key: str) -> dict[str, Any] | None:
        """The record of ``rebalance cache keep`` for this key (``{"key": entry served instead, ...}``),
        or None when there is none or the entry it serves is gone."""
        try:
            record = json.loads((self.root / step / f"{key}{KEPT_SUFFIX}").read_text())
        except (OSError, ValueError):
            return None
        return record if self.has(step, record["key"]) else None

    def keep(self, step: str, key: str, record: dict[str, Any]) -> None:
        """Serve the complete entry ``record["key"]`` whenever ``key`` is asked for."""
        if not self.has(step, record["key"]):
            raise ValueError(f"no complete entry {step}/{record['key']} to keep")
        write_json_atomic(self.root / step / f"{key}{KEPT_SUFFIX}", record)

    def drop_shards(self, step: str, key: str) -> None:
        for folder in (self.root / step).glob(f"{key}.shards-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def entries(self) -> list[CacheEntry]:
        found = []
        for step_dir in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            for folder in sorted(step_dir.iterdir()):
                if not folder.is_dir():
                    continue
                marker = read_marker(folder)
                found.append(
                    CacheEntry(
                        step=step_dir.name,
                        key=folder.name,
                        path=folder,
                        bytes=sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
                        rows=marker.get("rows") if marker else None,
                        complete=marker is not None,
                    )
                )
        return found

    def clear(self, step: str | None = None, entries: tuple[str, ...] = ()) -> int:
        """Remove every entry, those of one ``step``, or the named ``entries`` (``step/key`` as
        ``verify`` lists them), with the keep records that point at them. Returns how many
        folders were removed."""
        removed = 0
        for entry in self.entries():
            named = f"{entry.step}/{entry.key}" in entries
            if named or (not entries and (step is None or entry.step == step)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        for record in self.root.glob(f"*/*{KEPT_SUFFIX}") if self.root.is_dir() else []:
            if not self.has(record.parent.name, json.loads(record.read_text())["key"]):
                record.unlink(missing_ok=True)
        return removed

    def verify(self) -> list[EntryCheck]:
        """Re-hash every entry against the digests its marker recorded when it was written."""
        checks = []
        for entry in self.entries():
            marker = read_marker(entry.path)
            if marker is None:
                checks.append(EntryCheck(entry, "partial", ("no completion marker",)))
                continue
            recorded = marker.get("files")
            if recorded is None:
                checks.append(EntryCheck(entry, "unverified", ("written before entries recorded digests",)))
                continue
            found = file_digests(entry.path)
            problems = tuple(
                [f"{name}: missing" for name in recorded if name not in found]
                + [
                    f"{name}: content changed"
                    for name in recorded
                    if name in found and found[name] != recorded[name]
                ]
                + [f"{name}: not written by the step" for name in found if name not in recorded]
            )
            checks.append(EntryCheck(entry, "corrupt" if problems else "ok", problems))
        return checks
