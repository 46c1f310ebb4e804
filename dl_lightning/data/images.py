"""Image folders: one subfolder per class, PNG/JPEG files of any size, read with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dl_lightning.data.raw import RawData, first_line
from dl_lightning.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("L", "1")


def read_image_folder(root: Path, image_size: int) -> RawData:
    """``x`` float32 ``(N, C, S, S)`` with raw pixel values 0..255, ``y`` the class folder names.

    ``S = image_size``; ``C`` is 1 when every image is grayscale (mode L or 1), else 3 (all converted to RGB).
    """
    files, labels = list_images(root)
    mode = "L" if all(_mode(path) in _GRAY_MODES for path in files) else "RGB"
    x = np.stack([load_image(path, mode, image_size) for path in files])
    return RawData(x, np.array(labels, dtype=object), "image", root.name)


def list_images(root: Path) -> tuple[list[Path], list[str]]:
    """Image files and their class names, in a stable order (classes sorted, files sorted within a class)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(f"image folder {root} is empty — put the images of each class in a subfolder named after it")
    classes = sorted(p for p in entries if p.is_dir())
    if not classes:
        raise InputError(
            f"image folder {root} has no class subfolders — put each class's images in a subfolder "
            "named after the class"
        )
    files: list[Path] = []
    labels: list[str] = []
    for folder in classes:
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"class folder '{folder.name}' in {root} has no PNG/JPEG images — add some or remove it")
        files += found
        labels += [folder.name] * len(found)
    return files, labels


def load_image(path: Path, mode: str, image_size: int) -> np.ndarray:
    """``(C, S, S)`` float32, converted to ``mode`` and resized (bilinear) to ``image_size`` square."""
    try:
        with Image.open(path) as image:
            resized = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read image {path} ({first_line(err)}) — replace or remove it") from err
    pixels = np.asarray(resized, dtype=np.float32)  # (S, S) or (S, S, 3)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _mode(path: Path) -> str:
    # Opening reads only the header, so this pass over the files is cheap.
    try:
        with Image.open(path) as image:
            return image.mode
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read image {path} ({first_line(err)}) — replace or remove it") from err
