"""What a step plugin imports: the ``step`` decorator, its parameter markers and the artifact types.

A plugin is a module listed under the ``rebalance.steps`` entry points of its package, whose
functions are decorated with ``@step``::

    from rebalance.plugin import LabeledDataset, step

    @step("keep_square_images", role="removes_rows")
    def keep_square_images(dataset: LabeledDataset, *, tolerance: float = 0.1) -> LabeledDataset:
        ...

These names are the stable surface; the modules behind them may move between releases.
"""

from rebalance.core.artifact import Artifact, ShardableArtifact, TableArtifact
from rebalance.core.registry import InputPath, ModelRef, step
from rebalance.domain.artifacts import (
    CaptionCandidates,
    CaptionCorpus,
    CaptionPool,
    CaptionRetrieval,
    ClassStats,
    CocoExport,
    ConceptCounts,
    ConceptFrequency,
    Embeddings,
    EntityStatistics,
    EpochIndex,
    HFDatasetExport,
    LabeledDataset,
    Report,
    Synonyms,
    TrainReport,
    VectorIndex,
)
from rebalance.errors import ConfigError, DataError, RebalanceError

__all__ = [
    "Artifact",
    "CaptionCandidates",
    "CaptionCorpus",
    "CaptionPool",
    "CaptionRetrieval",
    "ClassStats",
    "CocoExport",
    "ConceptCounts",
    "ConceptFrequency",
    "ConfigError",
    "DataError",
    "Embeddings",
    "EntityStatistics",
    "EpochIndex",
    "HFDatasetExport",
    "InputPath",
    "LabeledDataset",
    "ModelRef",
    "RebalanceError",
    "Report",
    "ShardableArtifact",
    "Synonyms",
    "TableArtifact",
    "TrainReport",
    "VectorIndex",
    "step",
]
