"""Image folders: one subfolder per class, PNG/JPEG files of any size, read with PIL."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from dl_lightning.data.raw import RawData
from dl_lightning.errors import InputError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("L", "1")
# PIL refuses images over 2 × Image.MAX_IMAGE_PIXELS (≈179M) and only warns above MAX_IMAGE_PIXELS: a small PNG
# can declare billions of pixels (a decompression bomb), so both are errors here, caught with unreadable files.
UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning)
AUTO_MAX_SIDE = 64  # image_size=auto never makes an image larger than this on its longer side
ImageSize = int | Literal["auto"]


def read_image_folder(root: Path, image_size: ImageSize = "auto") -> RawData:
    """``x`` float32 ``(N, C, H, W)`` with raw pixel values 0..255, ``y`` the class folder names.

    ``C`` is 1 when every image is grayscale (mode L or 1), else 3 (all converted to RGB). An int
    ``image_size`` S resizes every image to S × S; ``"auto"`` keeps the images' own size when they all share
    one, else takes the median height × median width, in both cases scaled down (aspect kept) so that the
    longer side is at most :data:`AUTO_MAX_SIDE`.
    """
    files, labels = list_images(root)
    headers = [_header(path) for path in files]  # (mode, (W, H)); opening reads only the header: cheap
    mode = "L" if all(m in _GRAY_MODES for m, _ in headers) else "RGB"
    size = (image_size, image_size) if image_size != "auto" else auto_size([wh for _, wh in headers])
    x = np.stack([load_image(path, mode, size) for path in files])
    return RawData(x, np.array(labels, dtype=object), "image", root.name)


def auto_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """``(W, H)`` for ``image_size=auto`` from the images' own ``(W, H)`` sizes (see :func:`read_image_folder`)."""
    if len(set(sizes)) == 1:
        width, height = sizes[0]
    else:
        width, height = (int(np.median([s[axis] for s in sizes])) for axis in (0, 1))
    scale = min(1.0, AUTO_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


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
    if len(classes) == 1:
        raise InputError(
            f"image folder {root} has one class subfolder ('{classes[0].name}'); a classifier needs two or more — "
            "add a subfolder of images for each other class"
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


def load_image(path: Path, mode: str, size: int | tuple[int, int]) -> np.ndarray:
    """``(C, H, W)`` float32, converted to ``mode`` and resized (bilinear) to ``size`` = S or ``(W, H)``."""
    width, height = (size, size) if isinstance(size, int) else size
    try:
        with _bombs_refused(), Image.open(path) as image:
            converted = image.convert(mode)
            if converted.size != (width, height):  # an image already of the size keeps its exact pixels
                converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    except UNREADABLE as err:
        raise InputError(f"cannot read image {path} ({first_line(err)}) — replace or remove it") from err
    pixels = np.asarray(converted, dtype=np.float32)  # (H, W) or (H, W, 3)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """The image's mode and ``(W, H)`` size."""
    try:
        with _bombs_refused(), Image.open(path) as image:
            return image.mode, image.size
    except UNREADABLE as err:
        raise InputError(f"cannot read image {path} ({first_line(err)}) — replace or remove it") from err


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """Raise PIL's DecompressionBombWarning instead of decoding the image (the CLI otherwise ignores warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield
