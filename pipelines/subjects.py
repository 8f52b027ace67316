"""Synthetic subjects on disk: each a stack of slices in the AD_NC layout, a NIfTI volume and a
reslice picture (``sample.py --subjects N --stack K``).

Per label, ``OUT/<label>/<subject>_<slice>.jpeg`` (the AD_NC names, so OUT can stand in for a
split of a data folder), ``OUT/volumes/<subject>.nii.gz`` and ``OUT/reslice_<label>.png``: the
mid-sagittal and mid-coronal reslices of every subject, beside a real patient's of that label
when a data folder is given; one brain reads as smooth anatomy from bottom to top there, a pile
of unrelated slices as stripes.

The NIfTI volume is (x, y, z) = (image columns left to right, image rows bottom to top, slices
lowest first), in millimetres: a diagonal affine with ``PIXEL_MM`` in-plane and ``SLICE_MM``
between slices (the stand-in data's geometry; AD_NC's files state none, and no claim is made
about the subject's left and right), and the label in the header's ``descrip``.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import IMAGE_SUFFIXES, patient_id, slice_number
from .errors import UserError
from .files import atomic_path, write_json
from .judge import Judge
from .runs import prepare_output_dir
from .sampling import (
    call_kwargs,
    load_pipeline,
    sampling_label,
    sampling_settings,
    seeded_generators,
)
from .slices import to_model_input
from .stack_metrics import own_stack_nearest, stack_accuracy, stack_report

# The stand-in data's geometry (tools.phantom: 0.95 mm pixels, 1.1-1.3 mm between slices);
# ADNI AD_NC's files state none, so the header carries these and says so.
PIXEL_MM = 0.95
SLICE_MM = 1.2
JPEG_QUALITY = 95


def subject_name(label: str, index: int) -> str:
    """``synthetic-AD-000``: a patient id with no '_', so ``<subject>_<slice>`` parses back."""
    return f"synthetic-{label}-{index:03d}"


def stack_to_volume(stack: np.ndarray) -> np.ndarray:
    """(K, H, W) slices, lowest first -> the (W, H, K) NIfTI array: x = columns, y = rows from
    the bottom of the image (anterior up), z = slices upwards."""
    return np.ascontiguousarray(np.transpose(stack[:, ::-1, :], (2, 1, 0)))


def write_nifti(stack: np.ndarray, path: str | Path, label: str, pixel_mm: float = PIXEL_MM,
                slice_mm: float = SLICE_MM) -> Path:
    """One subject's (K, H, W) uint8 stack as a NIfTI-1 volume with its spacing in the affine
    and header (mm) and its label in ``descrip``."""
    image = nib.Nifti1Image(stack_to_volume(stack), np.diag([pixel_mm, pixel_mm, slice_mm, 1.0]))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = f"synthetic {label} subject".encode()[:79]
    image.set_qform(image.affine, code=2)
    image.set_sform(image.affine, code=2)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(image.to_bytes(), mtime=0))
    return path


def reslices(stack: np.ndarray, rows_per_slice: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(mid-sagittal (K r, H), mid-coronal (K r, W)) of a (K, H, W) stack, the top slice at the
    top, each slice ``rows_per_slice`` rows tall."""
    k, h, w = stack.shape
    sagittal = stack[::-1, :, w // 2]
    coronal = stack[::-1, h // 2, :]
    return (np.repeat(sagittal, rows_per_slice, axis=0),
            np.repeat(coronal, rows_per_slice, axis=0))


def reslice_picture(stacks: dict[str, np.ndarray], path: str | Path,
                    rows_per_slice: int | None = None) -> Path:
    """One row per named stack: its name, mid-sagittal and mid-coronal reslice (PNG)."""
    if rows_per_slice is None:
        rows_per_slice = max(1, round(2 * SLICE_MM / PIXEL_MM))
    rows = []
    for name, stack in stacks.items():
        sag, cor = reslices(stack, rows_per_slice)
        pad = np.zeros((sag.shape[0], 8), np.uint8)
        rows.append((name, np.concatenate([sag, pad, cor], axis=1)))
    width = max(r.shape[1] for _, r in rows) + 130
    height = sum(r.shape[0] + 8 for _, r in rows) + 8
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    top = 8
    for name, row in rows:
        draw.text((4, top + row.shape[0] // 2 - 5), name, fill=255)
        canvas.paste(Image.fromarray(np.ascontiguousarray(row)), (126, top))
        top += row.shape[0] + 8
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def real_patient_stacks(data_root: str | Path, label: str,
                        splits: tuple[str, ...] = ("test",)) -> dict[str, np.ndarray]:
    """Every real patient of ``label`` in ``data_root``'s ``splits`` (default the test split,
    which no judge trained on): name -> (K, H, W) uint8 slices ordered by slice number, lowest
    first (patients whose slices differ in size left out)."""
    patients: dict[str, list[Path]] = {}
    for split in splits:
        folder = Path(data_root) / split / label
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and slice_number(path.name) is not None:
                    patients.setdefault(patient_id(path.name), []).append(path)
    out = {}
    for name in sorted(patients):
        files = sorted(patients[name], key=lambda p: slice_number(p.name))
        slices = [np.asarray(Image.open(f).convert("L")) for f in files]
        if len({s.shape for s in slices}) == 1:
            out[name] = np.stack(slices)
    return out


def measure_against_real(stacks: np.ndarray, real: dict[str, np.ndarray], length: int,
                         first: int, resolution: int, label_id: int, judge=None,
                         level_judge=None) -> dict | None:
    """``stack_metrics.stack_report`` of the generated stacks against the real patients with
    ``length`` slices at the same levels (slices ``first`` onwards), both at the model's
    resolution, and with a judge (``judge.Judge``, as evaluate.py caches it in MODEL/judge) its
    stack-level accuracy and own-stack nearest neighbour in its feature space, with a level
    judge (MODEL/judge_level) the mean level error per slice; None when no real patient has
    ``length`` slices."""
    k = stacks.shape[1]
    chosen = [s[first : first + k] for s in real.values() if len(s) == length]
    if not chosen or k < 2:
        return None

    def model_size(group):
        return np.stack([[to_model_input(p, resolution) for p in one] for one in group])

    sets = {"generated": model_size(stacks), "real": model_size(chosen)}
    report = stack_report(sets["generated"], sets["real"])
    levels = np.asarray(stack_levels_of(first, k, length))
    for name, group in sets.items():
        flat = torch.from_numpy(group.reshape(-1, 1, resolution, resolution))
        ids = np.repeat(np.arange(len(group)), k)
        if judge is not None and judge.resolution == resolution:
            report.setdefault("judge_stack_accuracy", {})[name] = stack_accuracy(
                judge.probabilities(flat), ids, np.full(len(ids), label_id))
            report.setdefault("judge_own_stack_nearest", {})[name] = own_stack_nearest(
                judge.features(flat), ids)
        if level_judge is not None and level_judge.resolution == resolution:
            error = np.abs(level_judge.positions(flat) - np.tile(levels, len(group)))
            report.setdefault("level_error", {})[name] = float(error.mean())
    return report


def stack_levels_of(first: int, k: int, length: int) -> list[float]:
    """The levels of slices ``first`` .. ``first + k - 1`` of a ``length``-slice stack."""
    return [(first + i) / max(length - 1, 1) for i in range(k)]


def load_judges(model_dir) -> tuple:
    """(label judge, level judge) cached by evaluate.py in MODEL/judge and MODEL/judge_level,
    each None where absent or unreadable."""
    out = []
    for name in ("judge", "judge_level"):
        try:
            out.append(Judge.load(Path(model_dir) / name))
        except (OSError, ValueError, KeyError, RuntimeError):
            out.append(None)
    return tuple(out)


def generate_subjects(pipe, label: str, subjects: int, stack: int | None, *, seed: int,
                      settings: dict, batch_size: int = 4) -> np.ndarray:
    """(subjects, K, H, W) uint8 stacks of ``label``, subject i from its own seeded generator
    (the same seed gives the same subjects at any batch size)."""
    label_id = sampling_label(pipe, label)
    out = []
    for start in range(0, subjects, batch_size):
        n = min(batch_size, subjects - start)
        gens = seeded_generators(seed, label_id, start, n)
        try:
            stacks = pipe.subjects([label_id], num_subjects=n, stack=stack, generator=gens,
                                   output_type="np", **call_kwargs(settings)).images
        except ValueError as err:
            raise UserError(str(err)) from None
        out += [np.round(s[..., 0] * 255).astype(np.uint8) for s in stacks]
    return np.stack(out)


def subjects_to_folder(model_dir, labels: list[str], out_dir, *, subjects: int, stack: int | None,
                       seed: int, batch_size: int = 4, device: str = "cpu",
                       data: str | Path | None = None, **overrides) -> dict:
    """Write every label's subjects (slices, volumes, reslice picture) and OUT/subjects.json."""
    pipe = load_pipeline(model_dir, device)
    if not getattr(pipe, "stack_conditioned", False):
        raise UserError(f"{model_dir} makes single slices only (trained without "
                        "unet.stack_conditioning), so it cannot make --subjects; train one with "
                        "--unet.level_conditioning true --unet.stack_conditioning true")
    length = pipe.config.stack_length
    stack = length if stack is None else stack
    if not isinstance(stack, int) or not 1 <= stack <= length:
        raise UserError(f"--stack must be from 1 to {length} (the slices per patient {model_dir} "
                        f"was trained on), got {stack}")
    settings = sampling_settings(pipe, **overrides)
    out_dir = prepare_output_dir(out_dir, "subjects.json")
    first = (length - stack) // 2  # the slice numbers of the levels pipe.subjects uses
    record = {"model": str(model_dir), "seed": seed, **settings, "stack": stack,
              "pixel_mm": PIXEL_MM, "slice_mm": SLICE_MM, "labels": {}, "complete": False}
    write_json(out_dir / "subjects.json", record)  # marks the folder as this script's from now on
    judges = load_judges(model_dir) if data is not None else (None, None)
    for label in labels:
        t0 = time.time()
        stacks = generate_subjects(pipe, label, subjects, stack, seed=seed, settings=settings,
                                   batch_size=batch_size)
        names = []
        for i, one in enumerate(stacks):
            name = subject_name(label, i)
            names.append(name)
            for k, pixels in enumerate(one):
                with atomic_path(out_dir / label / f"{name}_{first + k}.jpeg") as tmp:
                    Image.fromarray(pixels).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            write_nifti(one, out_dir / "volumes" / f"{name}.nii.gz", label)
        seconds = round(time.time() - t0, 2)
        shown = dict(zip(names, stacks, strict=True))
        real = real_patient_stacks(data, label) if data is not None else {}
        shown_real = max(real, key=lambda p: len(real[p])) if real else None
        if shown_real is not None:
            shown[f"real {shown_real}"[:20]] = real[shown_real]
        reslice_picture(shown, out_dir / f"reslice_{label}.png")
        record["labels"][label] = {
            "subjects": names, "folder": label, "volumes": "volumes",
            "reslice": f"reslice_{label}.png", "real_patient": shown_real, "seconds": seconds,
            "measures": measure_against_real(stacks, real, length, first, pipe.resolution,
                                             pipe.label_ids([label])[0], *judges)}
    record["complete"] = True
    write_json(out_dir / "subjects.json", record)
    return record
