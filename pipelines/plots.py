"""Pictures: image grids written as 8-bit greyscale PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import to_pixels


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) float in [-1, 1] -> (N, H, W) uint8."""
    return to_pixels(images).squeeze(1).cpu().numpy()


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(images: np.ndarray, path: str | Path, nrow: int = 8) -> Path:
    return save_png(grid(images, nrow), path)
