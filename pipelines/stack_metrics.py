"""Whether a stack of slices is one brain: measures of synthetic subjects against real patients.

Stacks are (K, H, W) uint8 arrays, lowest slice first; a set of stacks is (S, K, H, W), every
stack at the same K levels (compare generated and real stacks at the same levels and size).

- ``adjacent_similarity``: SSIM and L1 between each slice and the next of the same stack;
  ``cross_stack_similarity``: the same for slice k of one stack and slice k + 1 of another, i.e.
  two independent samples at the same adjacent levels.
- ``own_stack_nearest``: how often a slice's nearest other slice is of its own stack.
- ``shape_spread``: the within-stack spread of brain width and height, each slice's divided by
  a reference's mean at its level.
- ``stack_accuracy``: a slice classifier's accuracy per stack, its probabilities averaged.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import _LocalStats, _ssim_pairs

BRAIN_THRESHOLD = 20  # grey value above which a pixel counts as brain (the background is ~0)


def _check_stacks(stacks) -> np.ndarray:
    stacks = np.asarray(stacks)
    if stacks.ndim != 4 or stacks.shape[1] < 2:
        raise ValueError(f"stacks must be (S, K >= 2, H, W), got shape {stacks.shape}")
    return stacks


def _pair_measures(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean SSIM, mean L1 in [0, 1]) of the pairs (a[i], b[i]), (N, H, W) uint8 each."""
    stats_a, stats_b = (_LocalStats(torch.from_numpy(np.ascontiguousarray(x))[:, None])
                        for x in (a, b))
    ssim = float(_ssim_pairs(stats_a.take(slice(None)), stats_b.take(slice(None)),
                             stats_a).mean())
    l1 = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)
    return ssim, l1


def adjacent_similarity(stacks) -> dict:
    """SSIM and L1 between adjacent slices of the same stack, averaged over all such pairs."""
    stacks = _check_stacks(stacks)
    ssim, l1 = _pair_measures(stacks[:, :-1].reshape(-1, *stacks.shape[2:]),
                              stacks[:, 1:].reshape(-1, *stacks.shape[2:]))
    return {"ssim": ssim, "l1": l1, "pairs": int(stacks.shape[0] * (stacks.shape[1] - 1))}


def cross_stack_similarity(stacks) -> dict:
    """SSIM and L1 between slice k of stack i and slice k + 1 of stack i + 1 (cyclically): two
    independent stacks at the same adjacent levels (needs two stacks or more)."""
    stacks = _check_stacks(stacks)
    if len(stacks) < 2:
        raise ValueError("cross-stack similarity needs at least two stacks")
    other = np.roll(stacks, -1, axis=0)
    ssim, l1 = _pair_measures(stacks[:, :-1].reshape(-1, *stacks.shape[2:]),
                              other[:, 1:].reshape(-1, *stacks.shape[2:]))
    return {"ssim": ssim, "l1": l1, "pairs": int(stacks.shape[0] * (stacks.shape[1] - 1))}


def own_stack_nearest(features, groups) -> float:
    """The share of rows whose nearest other row (Euclidean) is of the same group."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32)).flatten(1)
    groups = np.asarray(groups)
    if len(x) != len(groups) or len(x) < 2:
        raise ValueError("give one group per feature row, at least two rows")
    distances = torch.cdist(x, x)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.argmin(dim=1).numpy()
    return float(np.mean(groups[nearest] == groups))


def brain_extent(stacks, threshold: int = BRAIN_THRESHOLD) -> np.ndarray:
    """(S, K, 2) width and height in pixels of each slice's brain (bounding box of the pixels
    above ``threshold``; 0 where none is)."""
    stacks = _check_stacks(stacks)
    mask = stacks > threshold
    out = np.zeros((*stacks.shape[:2], 2))
    for axis, col in ((1, 0), (2, 1)):  # any over rows -> columns (width); over columns: height
        present = mask.any(axis=axis + 1)
        idx = np.arange(present.shape[-1])
        first = np.where(present, idx, present.shape[-1]).min(axis=-1)
        last = np.where(present, idx, -1).max(axis=-1)
        out[..., col] = np.maximum(last - first + 1, 0)
    return out


def shape_spread(stacks, reference) -> float:
    """Mean over stacks of the within-stack standard deviation of width and height, each slice's
    divided by ``reference``'s mean at its level (averaged over the two)."""
    extent, ref = brain_extent(stacks), brain_extent(reference).mean(axis=0)
    normalised = extent / np.maximum(ref, 1.0)
    return float(normalised.std(axis=1).mean())


def stack_accuracy(probabilities, stack_ids, labels) -> float:
    """Accuracy of the per-stack label: each stack's (N, classes) probabilities averaged over its
    slices, the largest taken, against its slices' ``labels`` (one label per stack)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    stack_ids, labels = np.asarray(stack_ids), np.asarray(labels)
    correct = []
    for stack in np.unique(stack_ids):
        rows = stack_ids == stack
        if len(np.unique(labels[rows])) != 1:
            raise ValueError(f"stack {stack!r} has slices of more than one label")
        correct.append(probabilities[rows].mean(axis=0).argmax() == labels[rows][0])
    return float(np.mean(correct))


def stack_report(generated, real) -> dict:
    """The measures of generated stacks beside real ones at the same levels and size."""
    generated, real = _check_stacks(generated), _check_stacks(real)
    flat = generated.reshape(len(generated), generated.shape[1], -1)
    real_flat = real.reshape(len(real), real.shape[1], -1)
    report = {
        "stacks": {"generated": int(len(generated)), "real": int(len(real)),
                   "slices_per_stack": int(generated.shape[1])},
        "adjacent": {"generated": adjacent_similarity(generated),
                     "real": adjacent_similarity(real)},
        "own_stack_nearest": {
            "generated": own_stack_nearest(flat.reshape(-1, flat.shape[-1]),
                                           np.repeat(np.arange(len(flat)), flat.shape[1])),
            "real": own_stack_nearest(real_flat.reshape(-1, real_flat.shape[-1]),
                                      np.repeat(np.arange(len(real_flat)), real_flat.shape[1]))},
        "shape_spread": {"generated": shape_spread(generated, real),
                         "real": shape_spread(real, real)},
    }
    if len(generated) >= 2:
        report["adjacent"]["independent"] = cross_stack_similarity(generated)
    gen, ref = report["adjacent"]["generated"], report["adjacent"]["real"]
    report["adjacent"]["ssim_ratio_to_real"] = gen["ssim"] / ref["ssim"] if ref["ssim"] else None
    report["shape_spread"]["ratio_to_real"] = (report["shape_spread"]["generated"]
                                               / max(report["shape_spread"]["real"], 1e-12))
    return report
