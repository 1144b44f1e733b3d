"""Built-in steps. Importing this package registers them."""

from rebalance.steps import export, ingest, stats, verify

__all__ = ["export", "ingest", "stats", "verify"]
