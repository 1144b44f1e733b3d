"""WebDataset pools, as img2dataset writes them: tar shards of samples ``<key>.jpg`` (or any image
suffix) with ``<key>.txt`` (the caption) and ``<key>.json`` (metadata: caption, url, ...), and
optionally a ``<shard>.parquet`` of metadata beside each shard.

Shards are read as a stream, one header at a time, and never unpacked: what comes out is one
reference a sample (``<shard>#<offset>+<size>:<member>``, see ``rebalance.io.references``), the
caption and the URL. Written by hand over ``tarfile`` rather than with the ``webdataset`` reader,
because only a tar stream's own headers say where a member's bytes start in the shard.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from rebalance.errors import DataError
from rebalance.io.references import tar_member

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
COLUMNS = ("file_name", "key", "caption", "url")


def scan_webdataset(
    root: Path, image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES, metadata_columns: tuple[str, ...] = ()
) -> pa.Table:
    """One row a sample that has an image, over every ``*.tar`` under ``root`` in path order:
    ``file_name`` (its reference, relative to ``root``), ``key``, ``caption`` and ``url`` (null
    where the sample has none), and each of ``metadata_columns`` from the sample's JSON or the
    shard's parquet (img2dataset's ``--save_additional_columns``)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder of WebDataset .tar shards")
    shards = sorted(root.rglob("*.tar"))
    if not shards:
        raise DataError(
            f"{root}: no .tar shards; expected a WebDataset folder such as img2dataset writes "
            "(00000.tar, 00001.tar, ...)"
        )
    wanted = {suffix.lower().lstrip(".") for suffix in image_suffixes}
    tables = []
    for shard in shards:
        # Python rows for one shard at a time: the pool as a whole is only ever Arrow columns.
        rows: dict[str, list] = {name: [] for name in (*COLUMNS, *metadata_columns)}
        side = _side_metadata(shard, metadata_columns)
        for key, sample in _samples(shard, root, wanted):
            meta = {**side.get(key, {}), **sample.get("json", {})}
            rows["file_name"].append(sample["image"])
            rows["key"].append(key)
            rows["caption"].append(sample.get("txt") or _text(meta.get("caption")))
            rows["url"].append(_text(meta.get("url")))
            for name in metadata_columns:
                rows[name].append(_text(meta.get(name)))
        tables.append(pa.table({name: pa.array(values, pa.string()) for name, values in rows.items()}))
    samples = pa.concat_tables(tables)
    if not samples.num_rows:
        raise DataError(f"{root}: the shards hold no image members with suffixes {sorted(wanted)}")
    return samples


def _samples(shard: Path, root: Path, wanted: set[str]) -> Iterator[tuple[str, dict]]:
    """(key, sample) for each sample of ``shard`` with an image, in the order the shard holds them."""
    relative = shard.relative_to(root).as_posix()
    samples: dict[str, dict] = {}
    try:
        # "r|": a forward-only stream; member data is skipped unless a caption or JSON is read.
        with tarfile.open(shard, mode="r|") as stream:
            for member in stream:
                if not member.isfile():
                    continue
                folder, _, file_name = member.name.rpartition("/")
                stem, _, suffix = file_name.partition(".")  # WebDataset: the key ends at the first dot
                key = f"{folder}/{stem}" if folder else stem
                sample = samples.setdefault(key, {})
                suffix = suffix.lower()
                if suffix in wanted:
                    sample["image"] = tar_member(relative, member.offset_data, member.size, member.name)
                elif suffix == "txt":
                    sample["txt"] = _read(stream, member).decode("utf-8", errors="replace").strip()
                elif suffix == "json":
                    sample["json"] = _json(_read(stream, member), shard, member.name)
    except (tarfile.TarError, EOFError) as error:
        raise DataError(
            f"{shard}: a truncated or corrupt tar shard ({error}); re-create it, or move it out of {root}"
        ) from None
    return ((key, sample) for key, sample in samples.items() if "image" in sample)


def _read(stream: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = stream.extractfile(member)
    return handle.read() if handle is not None else b""


def _json(data: bytes, shard: Path, member: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as error:
        raise DataError(f"{shard}: member {member} is not valid JSON ({error})") from None
    return value if isinstance(value, dict) else {}


def _side_metadata(shard: Path, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """img2dataset's ``<shard>.parquet`` (``key``, ``caption``, ``url``, ...) by key, when present."""
    path = shard.with_suffix(".parquet")
    if not path.exists():
        return {}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: cannot read the shard's metadata: {str(error).splitlines()[0]}") from None
    if "key" not in table.column_names:
        raise DataError(f"{path}: the shard's metadata has no 'key' column; found {table.column_names}")
    keep = [name for name in ("key", "caption", "url", *extra) if name in table.column_names]
    return {row.pop("key"): row for row in table.select(keep).to_pylist()}


def _text(value) -> str | None:
    return None if value is None else str(value)
