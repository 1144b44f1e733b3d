"""Built-in steps. Importing this package registers them."""

from rebalance.steps import export, ingest, sampling, stats, verify

__all__ = ["export", "ingest", "sampling", "stats", "verify"]
