"""What every generator of AD/NC slices shares: label names and ids, pixel ranges, the native crop.

This module is portable: it imports only numpy, torch, Pillow and diffusers, never the rest of
this repository, because it is copied into every saved model folder beside the pipeline file
(``pipeline_adni.py`` / ``pipeline_stylegan2.py`` import it as ``from .slices import ...``), so
that ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without this
repository. Library code here raises ``ValueError``; the command-line scripts turn it into their
one-line exit-2 message.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

CLASS_NAMES = ("NC", "AD")  # index = label id
NULL_LABEL = len(CLASS_NAMES)  # the "no label" id of classifier-free guidance
NATIVE_SIZE = (256, 240)  # (width, height) of an ADNI AD_NC slice as PIL reports it
OUTPUT_TYPES = ("pil", "np", "pt")


def parse_label(label, class_names=CLASS_NAMES) -> int:
    """A label name (any case), an id, or an id written as text -> the label id.

    The one parser of labels: pipelines, scripts and the data layer all call it, so they accept
    and reject the same inputs.
    """
    names = [n.upper() for n in class_names]
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = int(label)
    if isinstance(label, str):
        text = label.strip()
        if text.upper() in names:
            return names.index(text.upper())
        if text.isdigit():
            label = int(text)
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) \
            and 0 <= int(label) < len(names):
        return int(label)
    raise ValueError(f"unknown label {label!r}; use one of {', '.join(class_names)} "
                     f"(or ids 0..{len(names) - 1})")


# ----------------------------------------------------------------------------- pixel ranges


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (0..255) -> float in [-1, 1], the range every network here works in."""
    return pixels.float() / 127.5 - 1.0


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 pixels, same shape (the inverse of to_unit_range)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) float in [-1, 1] -> (N, H, W) uint8 numpy."""
    return to_pixels(images).squeeze(1).cpu().numpy()


# ----------------------------------------------------------------------------- geometry


def pad_to_square(pixels: np.ndarray) -> np.ndarray:
    """Centre a (H, W) slice on a black square of side max(H, W)."""
    h, w = pixels.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=pixels.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = pixels
    return out


def to_model_input(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """(H, W) uint8 native slice -> (R, R) uint8: pad to a square, then an antialiased resize."""
    square = pad_to_square(pixels)
    if square.shape[0] == resolution:
        return square
    return np.asarray(Image.fromarray(square).resize((resolution, resolution), Image.LANCZOS))


def to_native(pixels: np.ndarray, native_size=NATIVE_SIZE) -> np.ndarray:
    """Inverse of :func:`to_model_input`: (R, R) -> (H, W) for ``native_size`` = (W, H).

    Exact when R equals the padded side (256 for ADNI); otherwise a resize then the same crop.
    """
    w, h = native_size
    side = max(w, h)
    if pixels.shape[0] != side:
        pixels = np.asarray(Image.fromarray(pixels).resize((side, side), Image.LANCZOS))
    top, left = (side - h) // 2, (side - w) // 2
    return pixels[top : top + h, left : left + w]


class SlicePipeline(DiffusionPipeline):
    """Base of the generators: label parsing and diffusers' output types, with the native crop.

    Follows diffusers' class-conditional pipeline (DiT): ``class_labels`` as names or ids, one
    image per entry; ``output_type`` "pil", "np" (float in [0, 1], NHWC) or "pt" (float in
    [0, 1], NCHW); ``native_size=True`` crops the square model output back to the slice's own
    256x240 (``False`` keeps the square).
    """

    def label_ids(self, class_labels) -> list[int]:
        """Names or ids (one, or a list) -> label ids; ValueError names a bad one."""
        if isinstance(class_labels, (str, int, np.integer)) or (
                isinstance(class_labels, torch.Tensor) and class_labels.ndim == 0):
            class_labels = [class_labels]
        ids = [parse_label(label, self.config.class_names) for label in class_labels]
        if not ids:
            raise ValueError("class_labels is empty; give at least one label")
        return ids

    def check_output_type(self, output_type: str, extra=()) -> None:
        if output_type not in OUTPUT_TYPES + tuple(extra):
            raise ValueError(f"unknown output_type {output_type!r}; use one of "
                             f"{', '.join(OUTPUT_TYPES + tuple(extra))}")

    def postprocess(self, images: torch.Tensor, output_type: str, native_size: bool = True):
        """(N, 1, R, R) float in [-1, 1] -> diffusers' output types, cropped when asked."""
        if native_size:
            size = tuple(self.config.native_size)
            return self.pixels_output(np.stack([to_native(p, size) for p in to_uint8(images)]),
                                      output_type)
        if output_type == "pil":
            return [Image.fromarray(p, mode="L") for p in to_uint8(images)]
        unit = (images.float().clamp(-1, 1) + 1) / 2
        return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()

    @staticmethod
    def pixels_output(pixels: np.ndarray, output_type: str):
        """(N, H, W) uint8 -> diffusers' output types ("pil", "np" NHWC or "pt" NCHW in [0, 1])."""
        if output_type == "pil":
            return [Image.fromarray(p, mode="L") for p in pixels]
        unit = torch.from_numpy(np.ascontiguousarray(pixels)).float()[:, None] / 255.0
        return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()
