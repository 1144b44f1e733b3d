"""Image decoding checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def probe_image(path: Path) -> tuple[int, int]:
    """Fully decode an image and return ``(width, height)``.

    Raises:
        OSError or ValueError: the file is missing, truncated or not a decodable image. A full
        ``load()`` is needed: Pillow's ``verify()`` accepts truncated files.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except UnidentifiedImageError as error:
        raise ValueError(f"not a decodable image: {error}") from None


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """Decode images to grey, resize to ``size × size`` and return uint8 rows (n × size²)."""
    rows = np.empty((len(paths), size * size), dtype=np.uint8)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.BILINEAR)
            rows[row] = np.asarray(grey, dtype=np.uint8).reshape(-1)
    return rows
