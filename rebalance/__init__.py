"""rebalance: data-centric rebalancing pipelines for long-tailed visual recognition."""

import os
from importlib.metadata import PackageNotFoundError, version

# OpenMP threads (numba's matcher, torch on CPU) sleep when a parallel region ends instead of
# spinning: they share the cores with parquet decoding and I/O threads, which spinning starves
# (the caption candidate step at 10 M captions: 1 s less CPU, 8 % less wall time on 2 cores).
# Read once, when libgomp loads; a value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("rebalance")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from rebalance.core import moved as _moved

_moved.install()
