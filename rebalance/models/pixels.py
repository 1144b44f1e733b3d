"""``pixels_pca``: an honest offline image featurizer, raw pixels projected by PCA.

It is no CLIP: it measures pixel similarity, which is enough to find near-duplicate images and to
give a linear probe something to learn from when no pretrained encoder can be installed. Pipelines
name it explicitly so that every figure says which representation produced it.
"""

from __future__ import annotations

import numpy as np


def pca_project(pixels: np.ndarray, dim: int, fit_on: np.ndarray | None = None) -> np.ndarray:
    """Project rows onto the top ``dim`` principal axes of ``fit_on`` (default: of ``pixels``).

    Exact SVD of the centred reference; each axis's sign is fixed so that its largest-magnitude
    loading is positive, which makes the output deterministic across LAPACK builds.
    Returns float32, n × min(dim, rows, columns of the reference).
    """
    reference = (pixels if fit_on is None else fit_on).astype(np.float64)
    mean = reference.mean(axis=0)
    _, _, components = np.linalg.svd(reference - mean, full_matrices=False)
    components = components[:dim]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    return ((pixels.astype(np.float64) - mean) @ components.T).astype(np.float32)
