"""The ADNI AD_NC data layer: scan, validate, decode, pad-to-square, patient-level splits.

Layout: ``ROOT/{train,test}/{AD,NC}/<patient>_<slice>.{jpeg,jpg,png}``. Label ids are fixed here,
not taken from a directory listing: NC=0, AD=1, and id 2 is the null label used by
classifier-free guidance. Every model saves ``CLASS_NAMES`` so the ids travel with it.

Validate a folder before training on it::

    python -m pipelines.data inspect /path/to/AD_NC [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError, cli_entry
from .slices import (  # noqa: F401  (re-exported: the data layer's names)
    CLASS_NAMES,
    NATIVE_SIZE,
    NULL_LABEL,
    parse_label,
    to_model_input,
    to_native,
    to_pixels,
    to_unit_range,
)

LABEL_IDS = {name: i for i, name in enumerate(CLASS_NAMES)}
SPLITS = ("train", "test")
COUNTERFACTUAL_DIR = "counterfactual"  # paired truth beside the splits (tools.phantom): not data
PAIRS_MANIFEST = "counterfactual.json"  # in COUNTERFACTUAL_DIR: the pairs and their severities
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def patient_id(filename: str) -> str:
    """ADNI slices are named ``<patient>_<slice>.jpeg``: the patient is before the last '_'."""
    stem = Path(filename).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def has_patient_pattern(filename: str) -> bool:
    """Whether a name follows ``<patient>_<slice>`` (a slice number after the last '_')."""
    stem = Path(filename).stem
    return "_" in stem and stem.rsplit("_", 1)[1].isdigit() and bool(stem.rsplit("_", 1)[0])


def slice_number(filename: str) -> int | None:
    """The slice number of ``<patient>_<slice>.jpeg``, or None when the name has none."""
    return int(Path(filename).stem.rsplit("_", 1)[1]) if has_patient_pattern(filename) else None


def slice_positions(files, patients) -> np.ndarray:
    """Each slice's level in its patient's stack, in [0, 1]: 0 = the patient's lowest slice
    number, 1 = its highest, from the numbers themselves (not their order in the listing).

    A gap in a patient's numbers stays a gap (slices 1, 2, 3, 10 -> 0, 1/9, 2/9, 1: the missing
    slices are missing levels, not a closer spacing). A patient with one slice, or with one
    distinct number, and a file without a slice number (its own patient) get the middle, 0.5.
    """
    numbers = [slice_number(f) for f in files]
    span: dict[str, tuple[int, int]] = {}
    for patient, number in zip(patients, numbers, strict=True):
        if number is not None:
            low, high = span.get(patient, (number, number))
            span[patient] = (min(low, number), max(high, number))
    out = np.full(len(numbers), 0.5)
    for i, (patient, number) in enumerate(zip(patients, numbers, strict=True)):
        low, high = span.get(patient, (0, 0))
        if number is not None and high > low:
            out[i] = (number - low) / (high - low)
    return out


def stack_summary(files, patients) -> dict:
    """How the slices stack up per patient: lengths, gaps, single slices, levels (``inspect``)."""
    numbers: dict[str, list] = {}
    for f, patient in zip(files, patients, strict=True):
        numbers.setdefault(patient, []).append(slice_number(f))
    lengths = Counter(len(v) for v in numbers.values())
    numbered = {p: sorted(n for n in v if n is not None) for p, v in numbers.items()}
    gaps = sorted(p for p, v in numbered.items() if v and v[-1] - v[0] + 1 > len(set(v)))
    positions = slice_positions(files, patients)
    bins = np.linspace(0, 1, 6)
    counts = np.histogram(positions, bins=bins)[0].tolist()
    return {
        "patients": len(numbers),
        "slices_per_patient": {str(k): lengths[k] for k in sorted(lengths)},
        "patients_with_gaps": len(gaps), "gap_examples": gaps[:5],
        "single_slice_patients": sum(1 for v in numbers.values() if len(v) == 1),
        "files_without_slice_number": sum(1 for v in numbers.values() for n in v if n is None),
        "position_histogram": {f"{bins[i]:.1f}-{bins[i + 1]:.1f}": counts[i] for i in range(5)},
    }


def data_warnings(files) -> list[str]:
    """What makes patient-level splits unsound, spelt out: names without ``<patient>_<slice>``
    (each such file counts as its own patient) and patient IDs filed under both labels."""
    out = []
    unnamed = [f.relpath for f in files if not has_patient_pattern(f.path.name)]
    if unnamed:
        out.append(f"{len(unnamed)} file(s) are not named <patient>_<slice> (e.g. {unnamed[0]}): "
                   "each counts as its own patient, so the patient-level validation split and "
                   "the train/test patient check become image-level for them")
    labels: dict[str, set] = {}
    for f in files:
        labels.setdefault(f.patient, set()).add(f.label)
    both = sorted(p for p, ls in labels.items() if len(ls) > 1)
    if both:
        out.append(f"{len(both)} patient ID(s) appear under both AD and NC (e.g. {both[0]}): one "
                   "person cannot have both diagnoses; check the folders (such a patient's "
                   "slices may land on both sides of a split)")
    return out


def label_id(label: str | int) -> int:
    """'AD'/'NC' (any case) or 0/1 -> label id; anything else is a user error."""
    try:
        return parse_label(label)
    except ValueError as err:
        raise UserError(str(err)) from None


# ----------------------------------------------------------------------------- decoding


def to_uint8_grey(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """Any PIL image -> (H, W) uint8; returns the conversion done, or None if it was 8-bit grey."""
    if image.mode == "L":
        return np.asarray(image), None
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image).astype(np.float64)
        # scaled by the image's own range: 12-bit values in a 16-bit file are not near-black
        low, top = min(float(arr.min()), 0.0), max(float(arr.max()), 1.0)
        arr = np.clip((arr - low) / (top - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return arr, f"mode {image.mode} scaled by its range [{low:g}, {top:g}] to 8-bit grey"
    return np.asarray(image.convert("L")), f"mode {image.mode} converted to greyscale (L)"


def decode_slice(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """A decoded slice -> (H, W) uint8 grey and what was done to it (None: a clean 8-bit slice
    of the native size); the one conversion every reader of slices uses."""
    arr, note = to_uint8_grey(image)
    if arr.shape not in (NATIVE_SIZE[::-1], NATIVE_SIZE):
        note = (note + "; " if note else "") + f"size {arr.shape[1]}x{arr.shape[0]} padded"
    return arr, note


# what decoding a damaged or non-image file raises (PIL, and datasets' Image feature)
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                 Image.DecompressionBombError)


def read_slice_file(path, what: str, max_pixels: int | None = None
                    ) -> tuple[np.ndarray, str | None]:
    """One slice file -> ``decode_slice``'s (pixels, conversion), or a UserError naming it as
    ``what``: not an image, or (with ``max_pixels``) too large to be a slice."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise UserError(f"{what} is {width}x{height} pixels: too large for a slice "
                                f"(native {NATIVE_SIZE[0]}x{NATIVE_SIZE[1]}); crop or resize it")
            image.load()
            return decode_slice(image)
    except DECODE_ERRORS as err:
        reason = "unknown format" if isinstance(err, UnidentifiedImageError) else (
            str(err) or type(err).__name__)
        raise UserError(f"{what} is not a readable image ({reason}); give an 8-bit greyscale "
                        "PNG or JPEG slice") from None


# ----------------------------------------------------------------------------- scanning


@dataclass
class SliceFile:
    path: Path
    relpath: str
    split: str
    label: int
    patient: str


@dataclass
class ScanReport:
    """What is in a folder: the usable files and everything that is not."""

    root: Path
    files: list[SliceFile] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # not images: ignored, counted
    problems: list[str] = field(default_factory=list)  # layout errors that stop loading
    missing_splits: list[str] = field(default_factory=list)

    def of_split(self, split: str) -> list[SliceFile]:
        return [f for f in self.files if f.split == split]


def symlink_reason(path: Path) -> str:
    """Why a symbolic link in a class folder is not read as a slice."""
    try:
        target = path.resolve(strict=True)
    except RuntimeError:
        return "a symbolic link in a loop"
    except OSError:
        return "a symbolic link to nothing (dangling)"
    return (f"a symbolic link to a folder ({target}), not followed: copy or move the slices "
            "into the class folder")


def scan(root: str | Path, splits: tuple[str, ...] = SPLITS) -> ScanReport:
    """Walk ``root``: classify every entry as a slice, a skipped stray file, or a problem."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; point --data at your AD_NC folder "
                        "(or write the stand-in set: python -m tools.phantom --out DIR)")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder; point --data at your AD_NC folder")
    report = ScanReport(root=root)
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            report.skipped.append({"file": entry.name, "reason": "not inside a split folder"})
        elif entry.name == COUNTERFACTUAL_DIR:
            report.skipped.append({"file": entry.name + "/", "reason": "paired counterfactual "
                                   "renderings (edit.py's truth), never training or test data"})
        elif entry.name not in SPLITS:
            report.skipped.append({"file": entry.name + "/", "reason": "not a split (train/test)"})
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            report.missing_splits.append(split)
            report.problems.append(f"missing split folder {split_dir} (expected {split}/AD and "
                                   f"{split}/NC)")
            continue
        for entry in sorted(split_dir.iterdir()):
            rel = entry.relative_to(root).as_posix()
            if entry.is_file():
                report.skipped.append({"file": rel, "reason": "not inside a class folder"})
            elif entry.name.upper() not in LABEL_IDS:
                report.problems.append(f"unknown class folder {rel}; only AD and NC are known "
                                       "(move it out of the data folder)")
        for name in CLASS_NAMES:
            class_dir = split_dir / name
            if not class_dir.is_dir():
                report.problems.append(f"missing class folder {class_dir.relative_to(root)}")
                continue
            found = 0
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file():
                    if path.is_symlink():  # counted, never dropped unseen
                        report.skipped.append({"file": path.relative_to(root).as_posix(),
                                               "reason": symlink_reason(path)})
                    continue
                rel = path.relative_to(root).as_posix()
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    report.problems.append(f"file name {ascii(rel)} is not valid UTF-8; rename "
                                           "it (e.g. convmv -f latin1 -t utf8)")
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    report.skipped.append({"file": rel, "reason": "not a .jpeg/.jpg/.png image"})
                    continue
                found += 1
                report.files.append(SliceFile(path, rel, split, LABEL_IDS[name],
                                              patient_id(path.name)))
            if found == 0:
                report.problems.append(f"class folder {class_dir.relative_to(root)} has no images")
    return report


# ----------------------------------------------------------------------------- loading


@dataclass
class SliceSet:
    """Decoded slices of one split, ready for the networks: (N, 1, R, R) uint8 in memory."""

    pixels: torch.Tensor
    labels: torch.Tensor  # (N,) int64, ids of CLASS_NAMES
    patients: list[str]
    files: list[str]
    resolution: int
    corrupt: list[dict] = field(default_factory=list)
    converted: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    # (N,) float32 levels in [0, 1] (slice_positions); None: computed from ``files`` here, which
    # is right only for a whole split (a subset keeps the levels of the split it came from)
    positions: torch.Tensor | None = None

    def __post_init__(self):
        if self.positions is None:
            self.positions = torch.from_numpy(
                slice_positions(self.files, self.patients).astype(np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> SliceSet:
        index = torch.as_tensor(index, dtype=torch.long)
        idx = index.tolist()
        return SliceSet(self.pixels[index], self.labels[index], [self.patients[i] for i in idx],
                        [self.files[i] for i in idx], self.resolution,
                        positions=self.positions[index])

    def as_float(self) -> torch.Tensor:
        """Pixels in [-1, 1], the range the VAE works in."""
        return to_unit_range(self.pixels)

    def fingerprint(self) -> str:
        """SHA-256 of pixels, labels, patients and resolution: what a cache must be keyed by."""
        digest = hashlib.sha256(str(self.resolution).encode())
        digest.update(self.pixels.contiguous().numpy().tobytes())
        digest.update(self.labels.numpy().astype(np.int64).tobytes())
        digest.update("\n".join(self.patients).encode())
        return digest.hexdigest()

    def summary(self) -> str:
        counts = Counter(self.labels.tolist())
        parts = [f"{counts.get(i, 0)} {n}" for i, n in enumerate(CLASS_NAMES)]
        extra = []
        if self.skipped:
            extra.append(f"{len(self.skipped)} non-image files skipped")
        if self.converted:
            extra.append(f"{len(self.converted)} converted")
        if self.corrupt:
            extra.append(f"{len(self.corrupt)} corrupt skipped")
        return (f"{len(self)} slices ({', '.join(parts)}) from {len(set(self.patients))} patients"
                + (f"; {'; '.join(extra)}" if extra else ""))


def _slice_table(files: list[SliceFile]):
    """The split as a `datasets` table with an Image column (decoded lazily, offline)."""
    import datasets

    table = datasets.Dataset.from_dict({
        "image": [str(f.path) for f in files],
        "file": [f.relpath for f in files],
        "label": [f.label for f in files],
        "patient": [f.patient for f in files],
    })
    return table.cast_column("image", datasets.Image())


class _DecodedSlices(torch.utils.data.Dataset):
    """Item i: (i, (R, R) uint8 or None, conversion note, error) of a split's table."""

    def __init__(self, table, resolution: int):
        self.table, self.resolution = table, resolution

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        try:
            arr, note = decode_slice(self.table[i]["image"])
        except DECODE_ERRORS as err:
            return i, None, None, str(err) or type(err).__name__
        return i, to_model_input(arr, self.resolution), note, None


def _as_list(batch):
    return batch


def load_split(
    root: str | Path,
    split: str,
    resolution: int,
    skip_corrupt: bool = False,
    progress: bool = True,
    max_images: int | None = None,
    num_workers: int = 0,
) -> SliceSet:
    """Decode ``split`` to (N, 1, R, R) uint8, reporting everything that was not a clean slice.

    ``num_workers``: decoding processes (0: in this one). Cost: linear in the files; the
    result holds N * R * R bytes.
    """
    from tqdm.auto import tqdm

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {SPLITS}")
    report = scan(root, splits=(split,))
    if report.problems:
        raise UserError(f"{root} is not a usable AD_NC folder:\n  " + "\n  ".join(report.problems)
                        + "\n(run: python -m pipelines.data inspect ROOT)")
    files = report.of_split(split)
    for warning in data_warnings(files):
        print(f"warning: {split}: {warning}", file=sys.stderr)
    # levels from the whole split's stacks, before any subsetting or corrupt file drops them
    positions = slice_positions([f.relpath for f in files], [f.patient for f in files])
    if max_images is not None and len(files) > max_images:
        # every k-th file keeps both classes and many patients in proportion
        keep = np.linspace(0, len(files) - 1, max_images).round().astype(int)
        files, positions = [files[i] for i in keep], positions[keep]
    check_fits_in_memory(len(files) * resolution * resolution, f"the {split} split")
    table = _slice_table(files)
    pixels = np.zeros((len(files), 1, resolution, resolution), dtype=np.uint8)
    good = np.ones(len(files), dtype=bool)
    corrupt, converted = [], []
    # forkserver, not fork: a child forked while torch's threads hold a lock can hang
    loader = torch.utils.data.DataLoader(
        _DecodedSlices(table, resolution), batch_size=64, num_workers=num_workers,
        collate_fn=_as_list, multiprocessing_context="forkserver" if num_workers else None)
    bar = tqdm(total=len(files), desc=f"decode {split}", disable=not progress, leave=False)
    for batch in loader:
        for i, arr, note, error in batch:
            if error is not None:
                corrupt.append({"file": files[i].relpath, "reason": error})
                good[i] = False
                continue
            if note:
                converted.append({"file": files[i].relpath, "reason": note})
            pixels[i, 0] = arr
        bar.update(len(batch))
    bar.close()
    if corrupt and not skip_corrupt:
        names = "\n  ".join(f"{c['file']}: {c['reason']}" for c in corrupt)
        raise UserError(f"{len(corrupt)} corrupt image(s) in {root}:\n  {names}\nremove them, or "
                        "pass --skip_corrupt true to skip them (they will be counted)")
    keep = np.flatnonzero(good)
    return SliceSet(
        pixels=torch.from_numpy(pixels[keep]),
        labels=torch.tensor([files[i].label for i in keep], dtype=torch.long),
        patients=[files[i].patient for i in keep],
        files=[files[i].relpath for i in keep],
        resolution=resolution,
        positions=torch.from_numpy(positions[keep].astype(np.float32)),
        corrupt=corrupt,
        converted=converted,
        skipped=[s for s in report.skipped if s["file"].startswith(split + "/")],
    )


def check_fits_in_memory(num_bytes: int, what: str) -> None:
    """Refuse, before the work, what would not fit in this machine's available memory."""
    import psutil

    available = psutil.virtual_memory().available
    if num_bytes > 0.8 * available:
        raise UserError(f"{what} needs {num_bytes / 2**30:.1f} GiB in memory, more than the "
                        f"{available / 2**30:.1f} GiB available; lower --resolution or use "
                        "fewer images")


def patient_split(patients: list[str], labels, fraction: float, seed: int = 0):
    """Indices (train, val) with ``fraction`` of each class's patients in val; no shared patient."""
    labels = [int(x) for x in labels]
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in sorted(set(labels)):
        pats = sorted({p for p, y in zip(patients, labels, strict=True) if y == label})
        n_val = int(round(len(pats) * fraction))
        if fraction > 0 and len(pats) > 1:
            n_val = min(max(n_val, 1), len(pats) - 1)
        val_patients.update(rng.permutation(pats)[:n_val].tolist())
    val = [i for i, p in enumerate(patients) if p in val_patients]
    train = [i for i, p in enumerate(patients) if p not in val_patients]
    return train, val


def load_train_val(root, data_cfg, progress: bool = True,
                   num_workers: int = 0) -> tuple[SliceSet, SliceSet]:
    """The train split, decoded (in ``num_workers`` processes), cut into (train, validation) by
    patient."""
    full = load_split(root, "train", data_cfg.resolution, data_cfg.skip_corrupt, progress,
                      num_workers=num_workers)
    train_idx, val_idx = patient_split(full.patients, full.labels, data_cfg.val_patients_fraction,
                                       data_cfg.split_seed)
    train, val = full.subset(train_idx), full.subset(val_idx)  # levels stay the whole stack's
    train.corrupt, train.converted, train.skipped = full.corrupt, full.converted, full.skipped
    return train, val


def spread_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (deterministic, covers many patients)."""
    k = min(k, n)
    return np.linspace(0, n - 1, k).round().astype(int).tolist() if k > 0 else []


def training_images(pixels: torch.Tensor, indices, flip: bool,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The pixel trainers' batch: uint8 slices by index -> [-1, 1] floats, randomly mirrored."""
    batch = to_unit_range(pixels[indices])
    return random_flip(batch, generator) if flip else batch


def random_crop(batch: torch.Tensor, size: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A random size x size window of each (C, H, W) image, placed independently per image."""
    n, _, h, w = batch.shape
    if size >= min(h, w):
        return batch
    top = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    return torch.stack([image[:, t:t + size, x:x + size]
                        for image, t, x in zip(batch, top, left, strict=True)])


def random_flip(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    if flip.any():
        batch = batch.clone()
        batch[flip] = batch[flip].flip(-1)
    return batch


# ----------------------------------------------------------------------------- inspect


def inspect_folder(root: str | Path) -> dict:
    """Everything a user should know about a folder before training on it, as a JSON-able dict."""
    report = scan(root)
    sizes, modes = Counter(), Counter()
    corrupt, converted = [], []
    per: dict[str, dict[str, dict]] = {s: {n: {"images": 0, "patients": set()} for n in CLASS_NAMES}
                                       for s in SPLITS if s not in report.missing_splits}
    for f in report.files:
        try:
            with Image.open(f.path) as image:
                image.load()
                sizes[f"{image.size[0]}x{image.size[1]}"] += 1
                modes[image.mode] += 1
                note = decode_slice(image)[1]
                if note:
                    converted.append({"file": f.relpath, "reason": note})
        except DECODE_ERRORS as err:
            corrupt.append({"file": f.relpath, "reason": str(err) or type(err).__name__})
            continue
        cell = per[f.split][CLASS_NAMES[f.label]]
        cell["images"] += 1
        cell["patients"].add(f.patient)
    splits = {s: {n: {"images": c["images"], "patients": len(c["patients"])} for n, c in d.items()}
              for s, d in per.items()}
    train_p = set().union(*[c["patients"] for c in per.get("train", {}).values()])
    test_p = set().union(*[c["patients"] for c in per.get("test", {}).values()])
    return {
        "root": str(Path(root)),
        "splits": splits,
        "patients_in_train_and_test": sorted(train_p & test_p),
        "sizes": dict(sizes),
        "modes": dict(modes),
        "skipped": report.skipped,
        "corrupt": corrupt,
        "converted": converted,
        "problems": report.problems,
        "warnings": data_warnings(report.files),
        "stacks": {s: stack_summary([f.relpath for f in report.of_split(s)],
                                    [f.patient for f in report.of_split(s)])
                   for s in SPLITS if s not in report.missing_splits},
    }


def format_inspection(info: dict) -> str:
    lines = [f"AD_NC folder: {info['root']}"]
    for split, classes in info["splits"].items():
        cells = ", ".join(f"{n} {c['images']} images / {c['patients']} patients"
                          for n, c in classes.items())
        lines.append(f"  {split:5s}: {cells}")
    lines.append(f"  patients in both train and test: {len(info['patients_in_train_and_test'])}")
    lines.append(f"  sizes: {info['sizes']}   modes: {info['modes']}")
    for split, stack in info.get("stacks", {}).items():
        lengths = ", ".join(f"{n} slices x {c}" for n, c in stack["slices_per_patient"].items())
        levels = ", ".join(f"{k}: {c}" for k, c in stack["position_histogram"].items())
        lines.append(f"  {split:5s} stacks: {stack['patients']} patients ({lengths}); "
                     f"{stack['patients_with_gaps']} with gaps in their slice numbers, "
                     f"{stack['single_slice_patients']} with a single slice, "
                     f"{stack['files_without_slice_number']} files without a slice number")
        lines.append(f"  {split:5s} levels (0 = a patient's lowest slice number, 1 = highest): "
                     f"{levels}")
    for key in ("skipped", "converted", "corrupt"):
        lines.append(f"  {key}: {len(info[key])}")
        lines.extend(f"    {e['file']}: {e['reason']}" for e in info[key][:50])
        if len(info[key]) > 50:
            lines.append(f"    ... and {len(info[key]) - 50} more (see --json)")
    for warning in info["warnings"]:
        lines.append(f"  WARNING: {warning}")
    for problem in info["problems"]:
        lines.append(f"  PROBLEM: {problem}")
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="validate an AD_NC folder and summarise it")
    p.add_argument("root")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    info = inspect_folder(args.root)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    if info["problems"] or info["corrupt"]:
        print(f"error: {args.root} has {len(info['problems'])} layout problem(s) and "
              f"{len(info['corrupt'])} corrupt image(s); fix them, or train with "
              "--skip_corrupt true to skip corrupt images", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
