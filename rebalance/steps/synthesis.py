"""Synthesis steps: new examples for the classes that retrieval could not fill."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core.artifacts import Embeddings, LabeledDataset
from rebalance.core.registry import step
from rebalance.retrieval import Target
from rebalance.steps.stats import balance_quotas, compute_class_stats, freeze_buckets
from rebalance.synthesis.features import calibrated_gaussian, smote


@step("synthesize_features")
def synthesize_features(
    dataset: LabeledDataset,
    embeddings: Embeddings,
    *,
    method: Literal["smote", "gaussian"] = "smote",
    target: Target | PositiveInt = "median",
    max_per_class: PositiveInt | None = None,
    k: PositiveInt = 5,
    borrow: PositiveInt = 2,
    alpha: confloat(ge=0) = 0.1,
    lof_neighbors: PositiveInt | None = 20,
    seed: NonNegativeInt = 0,
) -> LabeledDataset:
    """Add synthetic *feature* rows to the classes still below the balance target.

    Quotas come from the same target as retrieval, over the original counts
    (``rebalance.steps.stats.balance_quotas``), so this makes only what retrieval could not fill.
    ``smote``: x_i + λ(x_nn − x_i) between a class sample and one of its k nearest same-class
    neighbours (``rebalance.synthesis.features.smote``). ``gaussian``: samples from a class
    Gaussian whose statistics tail classes borrow from their ``borrow`` nearest frequent classes,
    after LOF outlier removal (RCAL / distribution calibration).

    New rows have no image: ``source: synthetic``, ``file_name`` null, the vector in ``feature``
    (read by ``gather_embeddings`` and so by the trainer), and provenance ``synthesis_method``,
    ``synthesis_parent`` / ``synthesis_neighbor`` (image ids; SMOTE only), ``synthesis_lambda`` and
    ``synthesis_seed``. A class that cannot be synthesised (one sample for SMOTE) keeps its count.
    """
    image_ids = dataset.images["image_id"].to_numpy()
    labels = dataset.single_labels("feature synthesis")
    features = embeddings.aligned_to(image_ids)
    quotas = balance_quotas(dataset, target, max_per_class=max_per_class)
    if method == "smote":
        made = smote(features, labels, quotas, k=k, seed=seed)
    else:
        head = np.array([b == "frequent" for b in compute_class_stats(dataset).table["bucket"].to_pylist()])
        made = calibrated_gaussian(
            features,
            labels,
            quotas,
            head=head,
            borrow=borrow,
            alpha=alpha,
            lof_neighbors=lof_neighbors,
            seed=seed,
        )
    count = len(made)

    def image_ids_of(rows: np.ndarray) -> pa.Array:
        return pa.array(np.where(rows >= 0, image_ids[np.maximum(rows, 0)], 0), pa.int64(), mask=rows < 0)

    columns = {
        "file_name": pa.nulls(count, pa.string()),
        "source": pa.array(["synthetic"] * count),
        "feature": pa.array(list(made.vectors), pa.list_(pa.float32())),
        "synthesis_method": pa.array([method] * count),
        "synthesis_parent": image_ids_of(made.parents),
        "synthesis_neighbor": image_ids_of(made.neighbors),
        "synthesis_lambda": pa.array(
            made.lambdas.astype(np.float64), pa.float64(), mask=np.isnan(made.lambdas)
        ),
        "synthesis_seed": pa.array([seed] * count, pa.int64()),
    }
    category_ids = dataset.categories["category_id"].to_numpy()[made.labels]
    return freeze_buckets(dataset).add_images(columns, category_ids)
