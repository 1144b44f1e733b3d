"""Read an image-folder dataset: ``root/<class name>/<image file>``."""

from __future__ import annotations

from pathlib import Path

from rebalance.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def scan_image_folder(
    root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> tuple[list[str], list[tuple[str, int]]]:
    """List class folders and their images, both sorted by name.

    Returns:
        ``(class_names, images)`` where ``images`` holds ``(path relative to root, class index)``.
        A class folder without images is kept as a class with zero images.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected an image folder laid out as root/<class>/<image>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders found; expected root/<class>/<image>")
    wanted = {ext.lower() for ext in extensions}
    images = []
    for index, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and not file.name.startswith(".") and file.suffix.lower() in wanted:
                images.append((file.relative_to(root).as_posix(), index))
    if not images:
        raise DataError(f"{root}: no image files with extensions {sorted(wanted)} under the class folders")
    return [p.name for p in class_dirs], images


def scan_pool_folder(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Every image file under ``root`` (recursively), as sorted paths relative to ``root``."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder of pool images")
    wanted = {ext.lower() for ext in extensions}
    files = sorted(
        file.relative_to(root).as_posix()
        for file in root.rglob("*")
        if file.is_file() and not file.name.startswith(".") and file.suffix.lower() in wanted
    )
    if not files:
        raise DataError(f"{root}: no image files with extensions {sorted(wanted)}")
    return files
