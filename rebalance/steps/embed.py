"""Embedding steps: one vector per image."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import PositiveInt

from rebalance.core.artifacts import Embeddings, LabeledDataset
from rebalance.core.registry import step
from rebalance.errors import DataError
from rebalance.io.images import load_pixels
from rebalance.models.pixels import pca_project


@step("embed_images")
def embed_images(
    dataset: LabeledDataset,
    fit: LabeledDataset | None = None,
    *,
    encoder: Literal["pixels_pca"] = "pixels_pca",
    dim: PositiveInt = 64,
    image_size: PositiveInt = 28,
) -> Embeddings:
    """Embed every image: pixels_pca = grey pixels resized to image_size², projected on their top-dim PCA axes.

    The PCA axes are fitted on ``fit`` when given (embed a test split with the training split's
    axes), else on ``dataset``. pixels_pca is an offline baseline, not a semantic encoder (see
    rebalance.models.pixels). Rows that come out NaN or infinite are an error naming their ids.
    """
    pixels = load_pixels(_paths(dataset), image_size)
    reference = pixels if fit is None else load_pixels(_paths(fit), image_size)
    vectors = pca_project(pixels, dim, fit_on=reference)
    ids = dataset.images["image_id"].to_numpy()
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} embedding(s) are NaN or infinite (first image ids: {ids[bad][:5].tolist()})"
        )
    return Embeddings(ids, vectors, encoder)


def _paths(dataset: LabeledDataset) -> list:
    return [dataset.image_path(name) for name in dataset.images["file_name"].to_pylist()]
