"""Built-in steps. Importing this package registers them."""

from rebalance.steps import (
    dedup,
    embed,
    export,
    frequency,
    ingest,
    report,
    retrieve,
    sampling,
    stats,
    synthesis,
    train,
    verify,
)

__all__ = [
    "dedup",
    "embed",
    "export",
    "frequency",
    "ingest",
    "report",
    "retrieve",
    "sampling",
    "stats",
    "synthesis",
    "train",
    "verify",
]
