"""The domain's artifact types: the typed values steps pass to each other, and their file I/O.

Every type implements the runtime's small protocol (``rebalance.core.artifact``: ``write`` / ``read``
/ ``num_rows``, plus ``shard`` / ``concat`` when a shardable step may consume it). The runner wraps
``write`` in an atomic temp → fsync → rename, so an artifact folder on disk is always complete. One
module per kind: ``dataset`` (the labelled dataset's three tables), ``vectors`` (embeddings and
FAISS indexes), ``tables`` (frequency, synonyms, statistics), ``captions`` (retrieval by caption)
and ``outputs`` (exports, reports);
every type, and the protocol itself, is importable from here.
"""

from rebalance.core.artifact import (
    Artifact,
    ShardableArtifact,
    TableArtifact,
    positions_of,
    read_parquet,
    write_parquet,
)
from rebalance.core.markdown import markdown_table, markdown_text
from rebalance.domain.artifacts.captions import CaptionCandidates, CaptionPool, CaptionRetrieval
from rebalance.domain.artifacts.dataset import (
    ANNOTATIONS_SCHEMA,
    CATEGORIES_SCHEMA,
    IMAGES_SCHEMA,
    REMOVED_SCHEMA,
    LabeledDataset,
)
from rebalance.domain.artifacts.outputs import CocoExport, HFDatasetExport, Report, TrainReport
from rebalance.domain.artifacts.tables import (
    CaptionCorpus,
    ClassStats,
    ConceptCounts,
    ConceptFrequency,
    EntityStatistics,
    EpochIndex,
    Synonyms,
)
from rebalance.domain.artifacts.vectors import Embeddings, VectorIndex

__all__ = [
    "ANNOTATIONS_SCHEMA",
    "CATEGORIES_SCHEMA",
    "IMAGES_SCHEMA",
    "REMOVED_SCHEMA",
    "Artifact",
    "CaptionCandidates",
    "CaptionCorpus",
    "CaptionPool",
    "CaptionRetrieval",
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
