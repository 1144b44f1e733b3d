"""Artifacts: the typed values steps pass to each other, and all of their file I/O.

Every artifact type implements the same small protocol (``write``/``read``/``num_rows``), plus
``shard``/``concat`` when a shardable step may consume it. The runner wraps ``write`` in an atomic
temp → fsync → rename, so an artifact folder on disk is always complete. One module per kind:
``base`` (the protocol, parquet I/O, the generic ``TableArtifact``), ``dataset``, ``vectors``,
``tables``, ``outputs`` and ``markdown``; every type is importable from here.
"""

from rebalance.core.artifacts.base import (
    Artifact,
    ShardableArtifact,
    TableArtifact,
    positions_of,
    read_parquet,
    write_parquet,
)
from rebalance.core.artifacts.dataset import (
    ANNOTATIONS_SCHEMA,
    CATEGORIES_SCHEMA,
    IMAGES_SCHEMA,
    REMOVED_SCHEMA,
    LabeledDataset,
)
from rebalance.core.artifacts.markdown import markdown_table, markdown_text
from rebalance.core.artifacts.outputs import CocoExport, HFDatasetExport, Report, TrainReport
from rebalance.core.artifacts.tables import (
    CaptionCorpus,
    ClassStats,
    ConceptCounts,
    ConceptFrequency,
    EntityStatistics,
    EpochIndex,
    Synonyms,
)
from rebalance.core.artifacts.vectors import Embeddings, VectorIndex

__all__ = [
    "ANNOTATIONS_SCHEMA",
    "CATEGORIES_SCHEMA",
    "IMAGES_SCHEMA",
    "REMOVED_SCHEMA",
    "Artifact",
    "CaptionCorpus",
    "CocoExport",
    "ClassStats",
    "ConceptCounts",
    "ConceptFrequency",
    "Embeddings",
    "EntityStatistics",
    "EpochIndex",
    "HFDatasetExport",
    "LabeledDataset",
    "Report",
    "ShardableArtifact",
    "Synonyms",
    "TableArtifact",
    "TrainReport",
    "VectorIndex",
    "markdown_table",
    "markdown_text",
    "positions_of",
    "read_parquet",
    "write_parquet",
]
