"""Image decoding checks."""

from __future__ import annotations

from pathlib import Path

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
