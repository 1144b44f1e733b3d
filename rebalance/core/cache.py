"""The content-addressed step cache.

Layout under the cache root::

    <step name>/<key>/                 a finished artifact; ``_COMPLETE.json`` inside it
    <step name>/<key>.shards-<n>/<i>/  finished shards of a sharded step, each with its marker
    <step name>/.tmp-<key>-...         work in progress (removed when its process is gone)
    .hashes.sqlite                     memo of input file digests

Every folder appears by atomic rename after its contents and marker are on disk, so a folder that
exists is complete, and a run killed at any moment leaves only temps behind.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from rebalance.core.artifacts import Artifact
from rebalance.core.fs import atomic_dir, remove_stale_temps

MARKER = "_COMPLETE.json"


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    step: str
    key: str
    path: Path
    bytes: int
    rows: int | None
    complete: bool


def write_entry(folder: Path, artifact: Artifact, info: dict[str, Any]) -> None:
    """Write ``artifact`` and its completion marker into ``folder``, atomically."""
    remove_stale_temps(folder.parent, folder.name)
    with atomic_dir(folder) as temp:
        artifact.write(temp)
        (temp / MARKER).write_text(json.dumps({**info, "rows": artifact.num_rows}, sort_keys=True))


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
        (temp / MARKER).write_text(json.dumps({**info, "rows": rows}, sort_keys=True))


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

    def clear(self, step: str | None = None) -> int:
        """Remove every entry (or those of one step). Returns the number of folders removed."""
        removed = 0
        for entry in self.entries():
            if step is None or entry.step == step:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed
