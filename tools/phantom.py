"""A deterministic stand-in for the ADNI AD_NC slice set, built from the MNI152 template.

Why: ADNI needs an application and a data use agreement, so neither the tests nor a fresh clone can
download it. This module writes a folder with the same layout, file names, image format and size
(``{train,test}/{AD,NC}/<patient>_<slice>.jpeg``, 8-bit grey, 256x240, skull-stripped), so every
pipeline runs end to end without the real data. No ADNI pixel is used or needed.

How: the MNI152 2009a T1 and tissue templates shipped inside the nilearn wheel (no network) give
the anatomy. Each patient is the template under a small affine, a smooth random warp, a random
contrast curve, bias field, Rician noise and JPEG quality. A per-patient severity in [0, 1] drives
the atrophy: the ventricle walls move outward (up to 5 mm), grey matter next to sulcal CSF is
replaced by CSF (wider sulci, thinner cortex) and the medial temporal lobe shrinks (mostly below
the imaged levels; it shows in the lowest slices). Severity is drawn from Beta distributions that
overlap (AD mean 0.6, NC mean 0.2: NC gets mild age-like changes), so the classes differ
systematically but not trivially.

Paired truth for counterfactuals (``--counterfactuals K``): the first K test patients of each
class rendered again at the other class's severity, everything else as drawn: anatomy, contrast,
bias field, noise and JPEG quality. Which severity (``--counterfactual_rule``): ``rank`` (default)
keeps the patient's rank, the quantile of its severity in its own class's Beta mapped to the same
quantile of the other class's (Pearl's abduction for the structural equation severity =
F_label^-1(U): the patient's U is kept, the label changed), so every pair moves the way the label
does; ``typical`` gives every patient the other class's mean, which for an AD patient drawn below
the NC mean renders its "without AD" version with *more* atrophy; ``additive`` moves every patient
by the difference of the class means (severity = class mean + U), clipped to [0, 1]. The generator
draws each class's severity on its own, so which of these is "the" counterfactual is an
assumption; `edit.py --evaluate` can score the edits against each. They are written to
``counterfactual/<NC_to_AD|AD_to_NC>/`` under the same file names as their sources in ``test/``,
with ``counterfactual/counterfactual.json`` holding both severities; the data layer never reads
that folder as labelled data, and the train/test images are the same bytes with or without it.
The per-patient brain size drawn with the severity (up to 3 % smaller) is kept as drawn, as part
of the anatomy: so the pair differs only where the atrophy acts (ventricles, sulci, medial
temporal lobe), and under 1 px at the 64 px the demo models work at.

Same seed and counts give byte-identical files. Write the default set (2,080 slices) with::

    python -m tools.phantom --out data/AD_NC_phantom [--figure docs/phantom_examples.png] \
        [--counterfactuals 3]

``--size adni`` writes the real release's patients per split and class instead (30,520 slices,
the rehearsal set of ``bench.rehearsal``); ``--size adni_quarter`` a quarter of it. Cost: linear
in the patients, written in ``--workers`` processes.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy import stats

from pipelines.data import CLASS_NAMES, COUNTERFACTUAL_DIR, NATIVE_SIZE, PAIRS_MANIFEST, SPLITS
from pipelines.errors import UserError, cli_entry
from pipelines.files import atomic_path

GENERATOR_VERSION = 1  # bump when the images change, so old folders are regenerated
MANIFEST = "phantom.json"  # written last: its presence means the set is complete
PARTIAL_MARKER = ".phantom-partial"  # present while a set is being written
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
MNI_ORIGIN = np.array([98.0, 134.0, 72.0])  # voxel index of MNI (0, 0, 0); 1 mm isotropic voxels

SLAB_CENTRE_Z = 10.0  # MNI z (mm) of the middle slice: lateral ventricles in view
SLAB_MARGIN = 40  # template voxels kept above and below the slab for rotations and warps
PIXEL_MM = 0.95  # output pixel size (mm): the brain is 175-200 px tall, as in ADNI AD_NC
T1_CSF, T1_GM, T1_WM = 0.27, 0.65, 0.86  # mean template T1 intensity of each tissue (0-1)
SEVERITY_BETA = {"NC": (1.5, 6.0), "AD": (3.0, 2.0)}  # Beta(a, b): means 0.2 and 0.6, overlapping
VENTRICLE_GROWTH_MM = 5.0  # how far the ventricle walls move out at severity 1
BRAIN_SHRINK = 0.03  # whole-brain size loss at severity 1, drawn once with the anatomy
MAX_SLICES = 40  # 40 slices span about 50 mm: still within the slab kept from the template
# patients per split and class of the ADNI AD_NC release at 20 slices each (train AD 10,400 /
# NC 11,120; test AD 4,460 / NC 4,540: 30,520 slices), and the quarter set for scaling checks
SIZES = {
    "adni": {"train": {"AD": 520, "NC": 556}, "test": {"AD": 223, "NC": 227}},
    "adni_quarter": {"train": {"AD": 130, "NC": 139}, "test": {"AD": 56, "NC": 57}},
}


# ----------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Templates:
    """Template maps on a slab, indexed [z, y, x] (x contiguous, as the output rows are)."""

    t1: np.ndarray  # T1 intensity in [0, 1], 0 outside the brain mask
    cortex: np.ndarray  # grey matter next to sulcal CSF, in [0, 1]: where atrophy opens sulci
    z0: int  # template z index of the slab's first plane
    brain_centre: np.ndarray  # (x, y, z) voxel coordinates of the slab's centre of the brain
    to_ventricles: np.ndarray  # (3, z, y, x) unit-peak pull towards the ventricles, (x, y, z) mm
    box: tuple[np.ndarray, np.ndarray]  # (low, high) voxel (x, y, z) corners of ``to_ventricles``


def template_path(kind: str) -> Path:
    """Path of an MNI152 template inside the installed nilearn package (never downloaded).

    Found without importing nilearn, whose import takes seconds (it pulls in sklearn, pandas).
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("nilearn is not installed; it ships the MNI152 templates the stand-in set "
                        "is built from (pip install nilearn)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / TEMPLATE.format(kind)
    if not path.is_file():
        raise UserError(f"the MNI152 template {path.name} is missing from the nilearn package; "
                        "reinstall it (pip install --force-reinstall nilearn)")
    return path


def _load(kind: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(template_path(kind)).dataobj, dtype=np.float32) / 255.0


def _brain_mask(tissue: np.ndarray) -> np.ndarray:
    """Grey + white matter, closed and filled slice by slice so ventricles and sulci are inside."""
    mask = ndi.binary_closing(tissue > 0.3, ndi.generate_binary_structure(3, 1), iterations=3)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndi.binary_fill_holes(mask[:, :, z])
    return mask


def _ventricles(csf: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Deep, central CSF: the ventricles and basal cisterns (the two largest such components)."""
    depth = ndi.distance_transform_edt(mask)
    x = np.arange(mask.shape[0])[:, None, None] - MNI_ORIGIN[0]
    deep = ndi.binary_opening((csf > 0.5) & (depth > 8) & (np.abs(x) < 30))
    labels, n = ndi.label(deep)
    sizes = ndi.sum(deep, labels, range(1, n + 1))
    return np.isin(labels, np.argsort(sizes)[::-1][:2] + 1)


def _ventricle_pull(ventricles: np.ndarray) -> dict:
    """Gradient of the blurred ventricle mask, peak 1, on the box where it acts.

    Moving a sample point along it by ``d`` mm draws CSF outward: the ventricle walls move out by
    about ``d`` while the septum between the two lateral ventricles stays where it is.
    """
    grad = np.stack(np.gradient(ndi.gaussian_filter(ventricles.astype(np.float32), 4.0)))
    norm = np.sqrt((grad**2).sum(0))
    grad /= norm.max()
    where = np.argwhere(norm > 0.01 * norm.max())
    low, high = where.min(0), where.max(0) + 1
    crop = grad[:, low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    return {"to_ventricles": np.ascontiguousarray(crop.transpose(0, 3, 2, 1), dtype=np.float32),
            "box": (low.astype(float), (high - 1).astype(float))}


def _zyx(volume: np.ndarray) -> np.ndarray:
    """[x, y, z] -> contiguous float32 [z, y, x]: output rows run along x, so sampling is local."""
    return np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def load_templates() -> Templates:
    """Load the templates and derive the maps once per process (a few seconds).

    Only a slab around the imaged levels is kept; coordinates stay those of the whole template.
    """
    zc = int(round(MNI_ORIGIN[2] + SLAB_CENTRE_Z))
    z0 = zc - SLAB_MARGIN
    t1, gm, wm = (_load(kind)[:, :, z0 : zc + SLAB_MARGIN] for kind in ("t1", "gm", "wm"))
    mask = _brain_mask(gm + wm)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    ventricles = _ventricles(csf, mask)
    sulcal = csf * ~ndi.binary_dilation(ventricles, iterations=3)
    near_sulci = ndi.gaussian_filter(sulcal, 1.5)
    cortex = np.clip(gm * near_sulci / np.percentile(near_sulci[gm > 0.5], 95), 0.0, 1.0)
    in_brain = np.argwhere(mask[:, :, zc - z0])
    pull = _ventricle_pull(ventricles)
    pull["box"] = tuple(corner + [0, 0, z0] for corner in pull["box"])
    return Templates(
        t1=_zyx(t1 * mask),
        cortex=_zyx(cortex),
        z0=z0,
        brain_centre=np.array([*(in_brain.min(0) + in_brain.max(0)) / 2.0, zc]),
        **pull,
    )


# ----------------------------------------------------------------------------- one patient


@dataclass(frozen=True)
class Patient:
    """Everything drawn at random for one patient (``seed`` seeds the noise when rendering)."""

    split: str
    label: str
    index: int
    pid: str
    severity: float
    first_slice: int
    slice_mm: float
    z_shift: float
    rotation: np.ndarray  # 3x3, template-from-output
    size: np.ndarray  # (3,) brain size relative to the template
    shift: np.ndarray  # (3,) mm
    warp: np.ndarray  # (3, 5, 5, 2) cosine coefficients of the smooth displacement, mm
    bias: np.ndarray  # (3, 3, 2) cosine coefficients of the log bias field
    levels: np.ndarray  # output intensity (0-1) of CSF, GM, WM
    gamma: float
    noise: float
    quality: int
    seed: tuple[int, ...]


def patient_rng(seed: int, split: str, label: str, index: int) -> np.random.Generator:
    """The generator for one patient: independent of every other patient and of the counts."""
    return np.random.default_rng([seed, SPLITS.index(split), CLASS_NAMES.index(label), index])


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation about z (in-plane), x (nodding) and y (tilt), angles in degrees."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def draw_patient(seed: int, split: str, label: str, index: int, pid: str) -> Patient:
    """Draw one patient's anatomy, atrophy severity and acquisition."""
    rng = patient_rng(seed, split, label, index)
    severity = float(rng.beta(*SEVERITY_BETA[label]))
    decay = np.exp(-np.add.outer(np.add.outer(np.arange(5) ** 2, np.arange(5) ** 2),
                                 np.arange(2) ** 2) / 6.0)
    gm = rng.uniform(0.44, 0.56)
    return Patient(
        split=split, label=label, index=index, pid=pid, severity=severity,
        first_slice=int(rng.integers(60, 81)),
        slice_mm=float(rng.uniform(1.1, 1.3)),
        z_shift=float(rng.normal(0.0, 1.5)),
        rotation=_rotation(*rng.normal(0.0, [3.0, 2.0, 1.5])),
        size=rng.uniform(0.95, 1.05) * rng.uniform(0.98, 1.02, 3) * (1.0 - BRAIN_SHRINK * severity),
        shift=rng.normal(0.0, [3.0, 3.0, 0.0]),
        warp=rng.normal(0.0, 1.6, (3, 5, 5, 2)) * decay,
        bias=rng.normal(0.0, 0.06, (3, 3, 2)),
        levels=np.array([rng.uniform(0.06, 0.16), gm, gm + rng.uniform(0.28, 0.36)]),
        gamma=float(rng.uniform(0.85, 1.15)),
        noise=float(rng.uniform(0.008, 0.025)),
        quality=int(rng.integers(75, 96)),
        seed=(seed, SPLITS.index(split), CLASS_NAMES.index(label), index),
    )


COUNTERFACTUAL_RULES = {  # --counterfactual_rule: what each gives the counterfactual (manifest)
    "rank": "the patient's quantile in its class's severity Beta, mapped to the same quantile of "
            "the target class's",
    "typical": "the target class's mean",
    "additive": "the patient's own, moved by the difference of the class means, clipped to [0, 1]",
}


def typical_severity(label: str) -> float:
    """The mean of a class's severity distribution (the ``typical`` rule's severity)."""
    a, b = SEVERITY_BETA[label]
    return a / (a + b)


def other_label(label: str) -> str:
    return CLASS_NAMES[1 - CLASS_NAMES.index(label)]


def counterfactual_severity(severity: float, label: str, rule: str = "rank") -> float:
    """The severity of a ``label`` patient's counterfactual under the other label.

    ``rank``: the same quantile of the other class's Beta as ``severity`` is of its own class's;
    ``typical``: the other class's mean, whatever the patient's own severity; ``additive``: moved
    by the difference of the class means (severity = mean_label + U), clipped to [0, 1].
    """
    target = other_label(label)
    if rule == "typical":
        return typical_severity(target)
    if rule == "additive":
        shift = typical_severity(target) - typical_severity(label)
        return float(min(max(severity + shift, 0.0), 1.0))
    if rule != "rank":
        raise ValueError(f"unknown counterfactual rule {rule!r}; one of "
                         f"{', '.join(COUNTERFACTUAL_RULES)}")
    rank = stats.beta.cdf(severity, *SEVERITY_BETA[label])
    return float(stats.beta.ppf(rank, *SEVERITY_BETA[target]))


def counterfactual(patient: Patient, rule: str = "rank") -> Patient:
    """The same patient under the other label's severity (``rule``), nothing else changed.

    Severity acts only through the atrophy warps and the sulcal loss at render time, so the brain
    box, bias field and noise draws are those of the patient as drawn: the pair differs only
    where the atrophy acts.
    """
    return replace(patient, severity=counterfactual_severity(patient.severity, patient.label,
                                                             rule))


def frame_mm(patient: Patient, slices: int, rows=None, cols=None):
    """Output positions in mm from the frame centre: (z per slice, y per row, x per column)."""
    width, height = NATIVE_SIZE
    rows = np.arange(height) if rows is None else rows
    cols = np.arange(width) if cols is None else cols
    uz = (np.arange(slices) - (slices - 1) / 2) * patient.slice_mm + patient.z_shift
    uy = (height / 2 - 0.5 - rows) * PIXEL_MM  # anterior at the top
    ux = (width / 2 - 0.5 - cols) * PIXEL_MM  # radiological: the patient's left on the right
    return uz, uy, ux


def sample_points(patient: Patient, tmpl: Templates, uz, uy, ux, atrophy=True) -> np.ndarray:
    """Template voxel coordinates (x, y, z) of the output grid, shape (3, slices, rows, cols).

    Affine (rotation, size, shift), then a smooth random warp, then the atrophy warps.
    """
    matrix = patient.rotation / patient.size[None, :]
    pts = np.empty((3, len(uz), len(uy), len(ux)))
    for i in range(3):
        pts[i] = (matrix[i, 0] * ux[None, None, :] + matrix[i, 1] * uy[None, :, None]
                  + matrix[i, 2] * uz[:, None, None])
        pts[i] += tmpl.brain_centre[i] + patient.shift[i]
        pts[i] += _smooth(patient.warp[i], uz, uy, ux, (200.0, 240.0, 120.0))
    return _atrophy(pts, patient.severity, tmpl) if atrophy else pts


def _smooth(coef: np.ndarray, uz, uy, ux, extent) -> np.ndarray:
    """A low-frequency field on the output grid: cosines in y (rows), x (columns), z (slices)."""
    by = np.cos(np.pi * np.outer(uy / extent[0] + 0.5, np.arange(coef.shape[0])))
    bx = np.cos(np.pi * np.outer(ux / extent[1] + 0.5, np.arange(coef.shape[1])))
    bz = np.cos(np.pi * np.outer(uz / extent[2] + 0.5, np.arange(coef.shape[2])))
    field = np.einsum("ijk,zk,yi->zyj", coef, bz, by)  # (S, H, nx): small
    return field @ bx.T  # (S, H, W)


def _inside(pts: np.ndarray, low, high) -> np.ndarray:
    """Which sample points lie in the box [low, high] (x, y, z): local effects skip the rest."""
    near = np.ones(pts.shape[1:], dtype=bool)
    for i in range(3):
        near &= (pts[i] >= low[i]) & (pts[i] <= high[i])
    return near


def _expand(pts: np.ndarray, centre, sigma, amount: float) -> None:
    """Pull sample points towards ``centre`` (Gaussian weight): what is there looks bigger.

    A negative ``amount`` pushes them away: the structure at ``centre`` shrinks.
    """
    centre, sigma = np.asarray(centre), np.asarray(sigma)
    near = _inside(pts, centre - 3 * sigma, centre + 3 * sigma)
    offset = pts[:, near] - centre[:, None]
    weight = amount * np.exp(-0.5 * ((offset / sigma[:, None]) ** 2).sum(0))
    for i in range(3):
        pts[i][near] -= offset[i] * weight


def _atrophy(pts: np.ndarray, severity: float, tmpl: Templates) -> np.ndarray:
    """Ventricular enlargement and medial temporal shrinkage, as warps of the sample points."""
    low, high = tmpl.box
    near = _inside(pts, low, high)
    local = pts[:, near] - low[:, None]
    for i in range(3):  # ventricles enlarge: sample points move towards them
        pull = ndi.map_coordinates(tmpl.to_ventricles[i], local[::-1], order=1)
        pts[i][near] += VENTRICLE_GROWTH_MM * severity * pull
    for side in (-1.0, 1.0):  # hippocampus and amygdala shrink, MNI (+-26, -20, -14)
        _expand(pts, MNI_ORIGIN + [26.0 * side, -20.0, -14.0], (7.0, 12.0, 7.0), -0.35 * severity)
    return pts


def _sample(volume: np.ndarray, pts: np.ndarray, z0: int) -> np.ndarray:
    """Trilinear sampling of a [z, y, x] slab at (x, y, z) template voxel coordinates."""
    coords = np.stack([pts[2] - z0, pts[1], pts[0]])
    return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0,
                               output=np.float32)


def _bias(coef: np.ndarray, uz, uy, ux) -> np.ndarray:
    """A smooth multiplicative field, exp of a few low cosines across the frame."""
    return np.exp(_smooth(coef, uz, uy, ux, (240.0, 256.0, 120.0)) - coef[0, 0, 0])


def _brain_box(patient: Patient, slices: int, tmpl: Templates, step: int = 8):
    """Rows and columns that can hold brain, from a coarse grid: the fine work skips the rest.

    Atrophy is left out here: it moves the interior, the outline stays within the margin.
    """
    width, height = NATIVE_SIZE
    rows, cols = np.arange(0, height, step), np.arange(0, width, step)
    pts = sample_points(patient, tmpl, *frame_mm(patient, slices, rows, cols), atrophy=False)
    brain = _sample(tmpl.t1, pts, tmpl.z0) > 0
    ys, xs = np.flatnonzero(brain.any((0, 2))), np.flatnonzero(brain.any((0, 1)))
    if len(ys) == 0:
        return np.arange(0), np.arange(0)
    r0, r1 = max(rows[ys[0]] - step, 0), min(rows[ys[-1]] + step + 1, height)
    c0, c1 = max(cols[xs[0]] - step, 0), min(cols[xs[-1]] + step + 1, width)
    return np.arange(r0, r1), np.arange(c0, c1)


def render(patient: Patient, slices: int, tmpl: Templates | None = None) -> np.ndarray:
    """The patient's slab of slices as (slices, H, W) uint8, brain on black."""
    tmpl = tmpl or load_templates()
    width, height = NATIVE_SIZE
    out = np.zeros((slices, height, width), dtype=np.uint8)
    rows, cols = _brain_box(patient, slices, tmpl)
    if len(rows) == 0:
        return out
    grid = frame_mm(patient, slices, rows, cols)
    pts = sample_points(patient, tmpl, *grid)
    t1 = _sample(tmpl.t1, pts, tmpl.z0)
    cortex = _sample(tmpl.cortex, pts, tmpl.z0)
    brain = t1 > 0.05
    # sulcal widening / cortical thinning: grey matter beside CSF becomes CSF
    loss = np.clip(1.6 * patient.severity * cortex - 0.15, 0.0, 0.9)
    t1 -= loss * np.clip(t1 - T1_CSF, 0.0, None)
    csf, gm, wm = patient.levels
    image = np.interp(t1, [0.0, T1_CSF, T1_GM, T1_WM, 1.0], [0.0, csf, gm, wm, min(wm + 0.06, 1)])
    image = image.astype(np.float32) ** patient.gamma * _bias(patient.bias, *grid)
    rng = np.random.default_rng([*patient.seed, 1])
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * patient.noise
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician, as in magnitude MRI
    image = ndi.gaussian_filter(image, (0, 0.5, 0.5)) * brain
    out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = np.clip(image * 255.0 + 0.5, 0, 255)
    return out


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """One (H, W) uint8 slice as 8-bit greyscale JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name, then rename: a killed run leaves no half-written image."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------- the whole set


@dataclass(frozen=True)
class Job:
    """One patient to write: where, who, and how many slices."""

    out_dir: str
    seed: int
    split: str
    label: str
    index: int
    pid: str
    slices: int
    counterfactual: str = ""  # a key of COUNTERFACTUAL_RULES: render the paired truth by it

    @property
    def folder(self) -> Path:
        if self.counterfactual:
            return pair_folder(self.out_dir, self.label)
        return Path(self.out_dir) / self.split / self.label


def pair_folder(root, label: str) -> Path:
    """Where the counterfactuals of ``label`` patients go: ``counterfactual/NC_to_AD`` etc."""
    return Path(root) / COUNTERFACTUAL_DIR / f"{label}_to_{other_label(label)}"


def patient_ids(seed: int, count: int) -> list[str]:
    """``count`` distinct 6-digit IDs like ADNI's: no patient can be in two splits."""
    rng = np.random.default_rng([seed, 0xAD])
    return [str(i) for i in rng.choice(np.arange(100_000, 1_000_000), count, replace=False)]


def per_label(patients, label: str) -> int:
    """A split's patient count for ``label``: one number for every class, or {class: number}."""
    return patients[label] if isinstance(patients, dict) else patients


def plan(out_dir, train_patients, test_patients, slices: int, seed: int) -> list[Job]:
    """Every patient of the set, in a fixed order (split, class, index).

    ``train_patients`` / ``test_patients``: per class, one number or {class: number}."""
    per_class = {"train": train_patients, "test": test_patients}
    cells = [(split, label, i) for split in SPLITS for label in CLASS_NAMES
             for i in range(per_label(per_class[split], label))]
    ids = patient_ids(seed, len(cells))
    return [Job(str(out_dir), seed, split, label, i, pid, slices)
            for (split, label, i), pid in zip(cells, ids, strict=True)]


def slice_names(job: Job) -> list[str]:
    """The job's file names, ``<patient>_<slice>.jpeg``, slice numbers consecutive."""
    first = draw_patient(job.seed, job.split, job.label, job.index, job.pid).first_slice
    return [f"{job.pid}_{first + k}.jpeg" for k in range(job.slices)]


def write_patient(job: Job) -> dict:
    """Render and write one patient's slices; returns what the manifest records about them."""
    drawn = draw_patient(job.seed, job.split, job.label, job.index, job.pid)
    patient = counterfactual(drawn, job.counterfactual) if job.counterfactual else drawn
    names = slice_names(job)
    for name, pixels in zip(names, render(patient, job.slices), strict=True):
        write_atomic(job.folder / name, encode_jpeg(pixels, patient.quality))
    record = {"patient": job.pid, "split": job.split, "label": job.label,
              "severity": round(drawn.severity, 4)}
    if job.counterfactual:
        record |= {"target": other_label(job.label),
                   "counterfactual_severity": round(patient.severity, 4),
                   "source": f"{job.split}/{job.label}",
                   "folder": job.folder.relative_to(job.out_dir).as_posix(), "files": names}
    return record


def _params(train_patients: int, test_patients: int, slices: int, seed: int) -> dict:
    return {"generator": "tools.phantom", "version": GENERATOR_VERSION,
            "train_patients": train_patients, "test_patients": test_patients, "slices": slices,
            "seed": seed}


def _check(train_patients, test_patients, slices, seed, workers, counterfactuals=0) -> None:
    """Every count must be a positive integer (slices at most MAX_SLICES); seed >= 0;
    counterfactuals from 0 to the test patients per class."""
    counts = [(f"{name}[{label}]" if isinstance(value, dict) else name, per_label(value, label))
              for name, value in (("train_patients", train_patients),
                                  ("test_patients", test_patients)) for label in CLASS_NAMES]
    for name, value in counts + [("slices", slices), ("workers", workers)]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"--{name} must be a positive integer, got {value!r}")
    if slices > MAX_SLICES:
        raise UserError(f"--slices must be at most {MAX_SLICES} (about 50 mm around the "
                        f"ventricles), got {slices}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    if sum(value for _, value in counts) > 100_000:
        raise UserError("at most 100,000 patients in train and test together")
    fewest_test = min(per_label(test_patients, label) for label in CLASS_NAMES)
    if isinstance(counterfactuals, bool) or not isinstance(counterfactuals, (int, np.integer)) \
            or not 0 <= counterfactuals <= fewest_test:
        raise UserError(f"--counterfactuals must be an integer from 0 to --test_patients "
                        f"({fewest_test}), got {counterfactuals!r}")


def _read_manifest(out: Path, name: str = MANIFEST) -> dict | None:
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def _counts(jobs: list[Job]) -> dict:
    counts = {split: {label: 0 for label in CLASS_NAMES} for split in SPLITS}
    for job in jobs:
        counts[job.split][job.label] += job.slices
    return counts


def _expected(jobs: list[Job]) -> set[Path]:
    return {job.folder / name for job in jobs for name in slice_names(job)}


def _is_complete(out: Path, name: str, params: dict, jobs: list[Job]) -> bool:
    """Whether ``out`` holds a manifest for ``params`` and every file of ``jobs``."""
    manifest = _read_manifest(out, name) if out.is_dir() else None
    return bool(manifest) and all(manifest.get(k) == v for k, v in params.items()) \
        and all(path.is_file() for path in _expected(jobs))


def _claim(out: Path, params: dict) -> None:
    """Refuse folders this module did not write; mark ``out`` as a set being written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file; give a folder path")
    ours = (out / MANIFEST).exists() or (out / PARTIAL_MARKER).exists()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise UserError(f"--out {out} is not empty and holds no stand-in set ({MANIFEST}); "
                        "choose a new or empty folder (it will not write into real data)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PARTIAL_MARKER).write_text(json.dumps(params))
        (out / MANIFEST).unlink(missing_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to --out {out}: {err.strerror or err}") from None


def _remove_stale(folders, keep: set[Path]) -> int:
    """Delete images and temporaries of an earlier, different or interrupted run."""
    removed = 0
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            stale = path.suffix == ".jpeg" and path not in keep
            if stale or path.name.endswith(".tmp"):
                path.unlink()
                removed += 1
    return removed


def _write_jobs(jobs: list[Job], workers: int) -> tuple[list[dict], float]:
    """Write every job's slices (in ``workers`` processes); (manifest records, seconds)."""
    start = time.perf_counter()
    if workers == 1:
        records = [write_patient(job) for job in jobs]
    else:
        # Not "fork": a child forked from a process whose threads (torch's OpenMP pool, a
        # server) hold a lock can wait on it forever (it hung the test suite once). Each
        # forkserver worker loads the templates itself, a few seconds.
        methods = mp.get_all_start_methods()
        context = mp.get_context("forkserver" if "forkserver" in methods else None)
        with context.Pool(workers) as pool:
            records = pool.map(write_patient, jobs, chunksize=1)
    return records, time.perf_counter() - start


def write_phantom(out_dir, train_patients: int = 42, test_patients: int = 10, slices: int = 20,
                  seed: int = 0, workers: int = 2, counterfactuals: int = 0,
                  counterfactual_rule: str = "rank") -> dict:
    """Write the stand-in set to ``out_dir``; returns image counts {split: {class: n}}.

    ``train_patients`` and ``test_patients`` are per class (a number, or {class: number} as in
    :data:`SIZES`). A folder that already holds the
    complete set for the same parameters is left as it is. ``counterfactuals``: also write the
    paired truth of that many test patients per class (:func:`write_counterfactuals`), their
    severities by ``counterfactual_rule``.
    """
    _check(train_patients, test_patients, slices, seed, workers, counterfactuals)
    out = Path(out_dir)
    params = _params(train_patients, test_patients, slices, seed)
    jobs = plan(out, train_patients, test_patients, slices, seed)
    counts = _counts(jobs)
    if _is_complete(out, MANIFEST, params, jobs):
        print(f"{out} already holds this stand-in set ({MANIFEST}); nothing to do")
    else:
        _claim(out, params)
        folders = [out / split / label for split in SPLITS for label in CLASS_NAMES]
        if _remove_stale(folders, _expected(jobs)):
            print(f"removed the images of an earlier, different or interrupted run in {out}")
        patients, seconds = _write_jobs(jobs, workers)
        manifest = {**params, "counts": counts, "seconds": round(seconds, 1),
                    "patients": patients}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (out / PARTIAL_MARKER).unlink(missing_ok=True)
        total = sum(n for cell in counts.values() for n in cell.values())
        print(f"wrote {total} slices from {len(jobs)} patients to {out} in {seconds:.1f} s "
              f"({workers} worker{'s' if workers > 1 else ''})")
    if counterfactuals:
        write_counterfactuals(out, params, jobs, counterfactuals, workers,
                              counterfactual_rule)
    return counts


def write_counterfactuals(out: Path, params: dict, jobs: list[Job], per_class: int,
                          workers: int, rule: str = "rank") -> Path:
    """The paired truth: the first ``per_class`` test patients of each class at the other class's
    severity by ``rule``, in ``out/counterfactual/``; returns its manifest's path.

    Written after the set itself, with its own manifest (last), so asking for more or fewer
    pairs never rewrites the train/test images.
    """
    params = {**params, "counterfactuals": per_class, "counterfactual_rule": rule}
    pairs = [replace(job, counterfactual=rule) for job in jobs
             if job.split == "test" and job.index < per_class]
    folder = out / COUNTERFACTUAL_DIR
    if _is_complete(folder, PAIRS_MANIFEST, params, pairs):
        print(f"{folder} already holds these counterfactuals; nothing to do")
        return folder / PAIRS_MANIFEST
    folder.mkdir(exist_ok=True)
    (folder / PAIRS_MANIFEST).unlink(missing_ok=True)
    _remove_stale([pair_folder(out, label) for label in CLASS_NAMES], _expected(pairs))
    records, seconds = _write_jobs(pairs, workers)
    manifest = {**params, "counterfactual_severity": COUNTERFACTUAL_RULES[rule],
                "severity_beta": SEVERITY_BETA,
                "note": "each file is the patient of the same name in its source folder, "
                        "rendered at counterfactual_severity; nothing else differs",
                "seconds": round(seconds, 1), "patients": records}
    (folder / PAIRS_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote the counterfactuals of {len(pairs)} test patients to {folder} in "
          f"{seconds:.1f} s")
    return folder / PAIRS_MANIFEST


# ----------------------------------------------------------------------------- figure


def examples_figure(data_dir, png_path, columns: int = 6) -> Path:
    """A 2 x ``columns`` grid (AD above NC): the middle slice of different train patients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.data import scan

    manifest = _read_manifest(Path(data_dir)) or {}
    severity = {p["patient"]: p["severity"] for p in manifest.get("patients", [])}
    files = scan(data_dir, splits=("train",)).files
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 5.0), squeeze=False)
    for row, label in enumerate(("AD", "NC")):
        by_patient: dict[str, list[Path]] = {}
        for f in files:
            if CLASS_NAMES[f.label] == label:
                by_patient.setdefault(f.patient, []).append(f.path)
        for ax, pid in zip(axes[row], sorted(by_patient)[:columns], strict=False):
            paths = sorted(by_patient[pid], key=lambda p: int(p.stem.rsplit("_", 1)[1]))
            middle = paths[len(paths) // 2]
            ax.imshow(np.asarray(Image.open(middle)), cmap="gray", vmin=0, vmax=255)
            note = f", severity {severity[pid]:.2f}" if pid in severity else ""
            ax.set_title(f"{label} {middle.stem}{note}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle("Stand-in AD_NC slices from tools.phantom (MNI152-based, not ADNI data): "
                 "AD top, NC bottom", fontsize=11)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# ----------------------------------------------------------------------------- command line


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.phantom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write (new, empty, or a set "
                        "written by this command)")
    parser.add_argument("--train_patients", type=int, default=42, help="patients per class")
    parser.add_argument("--test_patients", type=int, default=10, help="patients per class")
    parser.add_argument("--slices", type=int, default=20, help="consecutive slices per patient")
    parser.add_argument("--size", choices=list(SIZES), default=None,
                        help="the real release's patients per split and class, 20 slices each "
                             "(adni: 30,520 slices; adni_quarter: 7,640); replaces "
                             "--train_patients, --test_patients and --slices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--figure", help="also save a PNG of example slices (AD and NC) here")
    parser.add_argument("--counterfactuals", type=int, default=0,
                        help="test patients per class also rendered at the other class's "
                             "severity, in OUT/counterfactual/ (the truth edit.py is measured "
                             "against)")
    parser.add_argument("--counterfactual_rule", choices=list(COUNTERFACTUAL_RULES),
                        default="rank", help="the counterfactual's severity (default rank): " +
                        "; ".join(f"{k} = {v}" for k, v in COUNTERFACTUAL_RULES.items()))
    args = parser.parse_args(argv)
    if args.size:
        sizes = SIZES[args.size]
        args.train_patients, args.test_patients, args.slices = sizes["train"], sizes["test"], 20
    write_phantom(args.out, args.train_patients, args.test_patients, args.slices, args.seed,
                  args.workers, args.counterfactuals, args.counterfactual_rule)
    if args.figure:
        print(f"saved {examples_figure(args.out, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
