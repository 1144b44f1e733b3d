"""Image decoding checks."""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from rebalance.io.references import ImageRef, open_image


def probe_image(ref: ImageRef) -> tuple[int, int]:
    """Fully decode an image and return ``(width, height)``.

    Raises:
        OSError or ValueError: the file is missing, truncated or not a decodable image. A full
        ``load()`` is needed: Pillow's ``verify()`` accepts truncated files.
    """
    try:
        with open_image(ref) as image:
            image.load()
            return image.size
    except UnidentifiedImageError as error:
        raise ValueError(f"not a decodable image: {error}") from None


def load_pixels(refs: list[ImageRef], size: int) -> np.ndarray:
    """Decode images to grey, resize to ``size × size`` and return uint8 rows (n × size²)."""
    rows = np.empty((len(refs), size * size), dtype=np.uint8)
    for row, ref in enumerate(refs):
        with open_image(ref) as image:
            grey = image.convert("L")
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.BILINEAR)
            rows[row] = np.asarray(grey, dtype=np.uint8).reshape(-1)
    return rows
