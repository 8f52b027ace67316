"""The field's measures of a counterfactual edit, against the stand-in set's paired truth.

Pure functions of (source, edit, truth) images, (N, H, W) uint8 at the native size, and the
``brain`` mask of each pair; what needs the model (running an edit again on an edit) lives in
:mod:`pipelines.counterfactual_eval`. After Monteiro et al., "Measuring axiomatic soundness of
counterfactual image models" (ICLR 2023):

- **effectiveness**: how much of the true change the edit explains,
  ``1 - MAE(edit, truth) / MAE(source, truth)`` inside the brain per slice (0: no better than
  leaving the slice alone, 1: the truth), the correlation of the edit's change with the true
  change, and the ratio of their sizes; the judge's flip rate beside the truth's own;
- **composition**: the null edit (target = the slice's own label) applied m times drifts from
  the source by :func:`drift`;
- **reversibility**: the edit edited back to the source's label, its distance to the source
  against the one-way change;
- **minimality**: the change outside the truly changed pixels;
- **CSF area**: dark pixels inside the brain (ventricles and sulci, which atrophy widens), the
  edit's change of it per patient against the truth's (correlation and slope).
"""

from __future__ import annotations

import numpy as np

CSF_FRACTION = 0.55  # a brain pixel darker than this share of its slice's median brain level is CSF
SHARE_TARGET = 0.3  # targets for the share of the true change explained, and its interval's low end
SHARE_LOW_TARGET = 0.15
CORRELATION_TARGET = 0.65
REVERSIBILITY_TARGET = 3.0  # the round trip ends this many times closer than the one-way change
COMPOSITION_TARGET = 0.2  # five null edits drift less than this share of the one-way change
FLIP_OF_TRUTH = 0.8  # the edit flips at least this share as often as the truth itself


def _pairs(a: np.ndarray, b: np.ndarray, brain: np.ndarray):
    return zip(a.astype(np.float64), b.astype(np.float64), brain, strict=True)


def mean_abs_difference(a: np.ndarray, b: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per slice: mean |a - b| in grey levels inside ``brain`` (nan for a slice without brain)."""
    return np.array([np.abs(x - y)[m].mean() if m.any() else np.nan for x, y, m in
                     _pairs(a, b, brain)])


def share_explained(edits: np.ndarray, sources: np.ndarray, truths: np.ndarray,
                    brain: np.ndarray) -> np.ndarray:
    """Per slice: 1 - MAE(edit, truth) / MAE(source, truth) inside the brain; nan where the
    truth equals the source there (nothing to explain)."""
    to_truth = mean_abs_difference(edits, truths, brain)
    source_to_truth = mean_abs_difference(sources, truths, brain)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = 1.0 - to_truth / source_to_truth
    return np.where(source_to_truth > 0, share, np.nan)


def change_correlation(edits: np.ndarray, sources: np.ndarray, truths: np.ndarray,
                       brain: np.ndarray) -> np.ndarray:
    """Per slice: Pearson's correlation of (edit - source) with (truth - source) inside the
    brain; nan where either change is constant there."""
    out = []
    for edit, src, truth, mask in zip(edits.astype(np.float64), sources.astype(np.float64),
                                      truths.astype(np.float64), brain, strict=True):
        a, b = (edit - src)[mask], (truth - src)[mask]
        if a.size < 2 or a.std() == 0 or b.std() == 0:
            out.append(np.nan)
        else:
            out.append(float(np.corrcoef(a, b)[0, 1]))
    return np.array(out)


def magnitude_ratio(edits: np.ndarray, sources: np.ndarray, truths: np.ndarray,
                    brain: np.ndarray) -> float:
    """The edit's mean absolute change inside the brain over the truth's (1: as large)."""
    edit = np.nanmean(mean_abs_difference(edits, sources, brain))
    truth = np.nanmean(mean_abs_difference(truths, sources, brain))
    return float(edit / truth) if truth > 0 else float("nan")


def outside_change(edits: np.ndarray, sources: np.ndarray, changed: np.ndarray,
                   brain: np.ndarray) -> dict[str, float]:
    """Minimality: the edit's mean absolute change (grey levels) inside the brain but outside
    the truly changed pixels, inside them, and the share of its total change that lies outside."""
    change = np.abs(edits.astype(np.float64) - sources.astype(np.float64))
    outside, inside = brain & ~changed, brain & changed
    total = change[brain].sum()
    return {"outside": float(change[outside].mean()) if outside.any() else float("nan"),
            "inside": float(change[inside].mean()) if inside.any() else float("nan"),
            "share_outside": float(change[outside].sum() / total) if total > 0 else float("nan")}


def drift(images: np.ndarray, sources: np.ndarray, brain: np.ndarray) -> float:
    """Mean absolute distance (grey levels, inside the brain) of ``images`` from the sources."""
    return float(np.nanmean(mean_abs_difference(images, sources, brain)))


def csf_area(pixels: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per slice: the number of CSF pixels, those inside the brain darker than CSF_FRACTION of
    the slice's median brain level (the ventricles and the sulci: T1 shows CSF dark)."""
    out = []
    for image, mask in zip(pixels.astype(np.float64), brain, strict=True):
        if not mask.any():
            out.append(0)
            continue
        out.append(int(((image < CSF_FRACTION * np.median(image[mask])) & mask).sum()))
    return np.array(out)


def csf_agreement(edits: np.ndarray, sources: np.ndarray, truths: np.ndarray,
                  brain: np.ndarray, patients: list[str]) -> dict:
    """The CSF area's change per patient (pixels, summed over its slices), the edit's against
    the truth's: Pearson's correlation over patients and the least-squares slope through the
    origin (1: the edit changes the CSF area as much as the truth). The source's own brain mask
    counts for all three, so only the dark pixels inside it move. Both are None, with the
    reason, where they are not defined (fewer than 3 patients, or no spread in the truth)."""
    edit_change = csf_area(edits, brain) - csf_area(sources, brain)
    true_change = csf_area(truths, brain) - csf_area(sources, brain)
    ids = sorted(set(patients))
    per_patient = {p: (int(sum(e for e, q in zip(edit_change, patients, strict=True) if q == p)),
                       int(sum(t for t, q in zip(true_change, patients, strict=True) if q == p)))
                   for p in ids}
    x = np.array([t for _, t in per_patient.values()], dtype=np.float64)
    y = np.array([e for e, _ in per_patient.values()], dtype=np.float64)
    record = {"per_patient": {p: {"edit": e, "truth": t} for p, (e, t) in per_patient.items()},
              "correlation": None, "slope": None, "not_defined": None}
    if x @ x > 0:
        record["slope"] = round(float(x @ y / (x @ x)), 4)
    if len(ids) < 3:
        record["not_defined"] = f"the correlation needs 3 patients or more, there are {len(ids)}"
    elif x.std() == 0 or y.std() == 0:
        record["not_defined"] = "the correlation needs a spread in both changes"
    else:
        record["correlation"] = round(float(np.corrcoef(x, y)[0, 1]), 4)
    return record


def flip_verdict(edit: float, truth: float, truth_at_size: float) -> bool:
    """The flip target: at least as often as the truth at the edit's size, and at least
    FLIP_OF_TRUTH times as often as the truth itself."""
    return edit >= truth_at_size and edit >= FLIP_OF_TRUTH * truth
