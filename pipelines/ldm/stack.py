"""Training side of the stack-conditioned UNet: each slice with the next-lower slice of its own
patient, the pair drawn from the latent cache with one mirroring decision for both.

The neighbour is the patient's slice with the next lower level (levels come from the slice
numbers in the file names, so the listing order does not matter); a patient's lowest slice has
none. The neighbour is also left out at random (``neighbour_drop_prob``), so the model learns to
draw the first slice of a subject on its own.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from .latents import LatentCache
from .pipeline_adni import neighbour_channels


def next_lower_slices(patients: list[str], positions: torch.Tensor) -> torch.Tensor:
    """(N,) index of each slice's next-lower slice of the same patient, -1 for its lowest."""
    order = sorted(range(len(patients)), key=lambda i: (patients[i], float(positions[i])))
    below = torch.full((len(patients),), -1, dtype=torch.long)
    for prev, cur in zip(order, order[1:], strict=False):
        if patients[prev] == patients[cur] and float(positions[prev]) < float(positions[cur]):
            below[cur] = prev
    return below


def typical_stack_length(patients: list[str]) -> int:
    """The median number of slices per patient (what a synthetic subject has by default)."""
    counts = Counter(patients)
    return int(round(float(np.median(list(counts.values()))))) if counts else 0


def sample_with_neighbours(cache: LatentCache, indices: torch.Tensor, below: torch.Tensor,
                           scaling_factor: float, drop_prob: float,
                           generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, neighbour channels) of the slices ``indices``: scaled posterior samples of each
    slice and of its next-lower slice, both mirrored or neither (``neighbour_channels``: the
    neighbour where it exists and was not dropped)."""
    neighbour = below[indices]
    present = (neighbour >= 0) & (torch.rand(len(indices), generator=generator) >= drop_prob)
    pair = torch.cat([indices, torch.where(neighbour >= 0, neighbour, indices)])
    mean, std = cache.mean[pair], cache.std[pair]
    if cache.flip_mean is not None:
        flip = (torch.rand(len(indices), generator=generator) < 0.5).repeat(2)[:, None, None, None]
        mean = torch.where(flip, cache.flip_mean[pair], mean)
        std = torch.where(flip, cache.flip_std[pair], std)
    latents = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor
    own, lower = latents.chunk(2)
    return own, neighbour_channels(lower, own, present)
