"""What a worker process keeps between shards: a model, an index on the GPU, built once per key.

A sharded step runs once per shard, and a dask worker runs many shards of the same step; loading
an encoder or a diffusion pipeline for each would cost more than the shard (the dask-cuda
convention: one model per GPU worker, kept). ``kept(key, build)`` returns the object built for
``key`` in this process, building it the first time. At most ``MAX_KEPT`` objects stay, the least
recently used leaving first, so a long run over many models does not hold them all.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
MAX_KEPT = 4

_kept: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
_builds: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def kept(key: Hashable, build: Callable[[], T]) -> T:
    """The object for ``key`` built in this process, built by ``build()`` if it is not kept."""
    with _lock:
        if key in _kept:
            _kept.move_to_end(key)
            return _kept[key]
    value = build()
    with _lock:
        _builds[str(key)] += 1
        _kept[key] = value
        while len(_kept) > MAX_KEPT:
            _kept.popitem(last=False)
    return value


def builds() -> int:
    """How many objects this process has built so far (a shard's loads are the difference)."""
    return sum(_builds.values())


def forget() -> None:
    """Drop everything kept (tests; or to free a GPU between runs in one process)."""
    with _lock:
        _kept.clear()
