"""``pixels_pca``: an honest offline image featurizer, raw pixels projected by PCA.

It is no CLIP: it measures pixel similarity, which is enough to find near-duplicate images and to
give a linear probe something to learn from when no pretrained encoder can be installed. Pipelines
name it explicitly so that every figure says which representation produced it.
"""

from __future__ import annotations

import numpy as np


def pca_project(pixels: np.ndarray, dim: int) -> np.ndarray:
    """Project rows onto their top ``dim`` principal components (float32, n × min(dim, n, p)).

    Exact SVD of the centred data; each component's sign is fixed so that its largest-magnitude
    loading is positive, which makes the output deterministic across LAPACK builds.
    """
    data = pixels.astype(np.float64)
    data -= data.mean(axis=0)
    _, _, components = np.linalg.svd(data, full_matrices=False)
    components = components[:dim]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    return (data @ components.T).astype(np.float32)
