"""rebalance: data-centric rebalancing pipelines for long-tailed visual recognition."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rebalance")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from rebalance.core import moved as _moved

_moved.install()
