"""Pictures: image grids written as 8-bit greyscale PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_path
from .slices import to_uint8  # noqa: F401  (re-exported for the trainers' grids)


def grid(images: np.ndarray, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """(N, H, W) uint8 -> one (rows*H, nrow*W) uint8 mosaic with black gutters."""
    n, h, w = images.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    out = np.zeros((rows * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top : top + h, left : left + w] = img
    return out


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W) uint8 array as a greyscale PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(tmp, format="PNG")
    return Path(path)


def save_grid(images: np.ndarray, path: str | Path, nrow: int = 8) -> Path:
    return save_png(grid(images, nrow), path)
