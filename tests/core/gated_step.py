"""A test-only sharded step that can be held mid-run, so a test can kill the run there."""

from __future__ import annotations

import time
from pathlib import Path

from rebalance.plugin import LabeledDataset, step


@step("test_gated_copy", shardable=True)
def gated_copy(dataset: LabeledDataset, *, gate: str, open_shards: int = 2) -> LabeledDataset:
    """Copy the shard; log the call; shards after the first ``open_shards`` wait until ``gate`` exists."""
    first_id = dataset.images["image_id"][0].as_py()
    with open(f"{gate}.calls", "a") as log:
        log.write(f"{first_id}\n")
    shard_index = first_id // dataset.num_rows if dataset.num_rows else 0
    while shard_index >= open_shards and not Path(gate).exists():
        time.sleep(0.05)
    return dataset


@step("test_gated_stats")
def gated_stats(dataset: LabeledDataset, *, gate: str) -> LabeledDataset:
    """An in-process (not sharded) step that waits for ``gate`` after announcing it started."""
    Path(f"{gate}.started").write_text("started")
    while not Path(gate).exists():
        time.sleep(0.05)
    return dataset
