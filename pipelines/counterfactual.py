"""Counterfactual edits of real slices ("this brain with AD, or without"), drawn and measured.

``edit.py`` is a thin layer over :func:`edit_to_folder`: read slices the way the data layer reads
them, edit them in batches with ``ADNICounterfactualPipeline``, and write per slice the
counterfactual (8-bit PNG at the source's native size), a signed difference map over the source,
one panel figure and ``edit.json`` with the judge's probability of the target label before and
after, SSIM to the source and the mean absolute change inside the brain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from .data import (
    CLASS_NAMES,
    IMAGE_SUFFIXES,
    label_id,
    patient_id,
    read_slice_file,
    scan,
    slice_number,
    slice_positions,
    spread_indices,
)
from .errors import UserError
from .files import atomic_path, write_json
from .ldm.pipeline_adni import (
    DEFAULT_DRAWS,
    DEFAULT_EDIT_METHOD,
    DEFAULT_REFINE,
    EDIT_DEFAULTS,
    EDIT_METHODS,
    ADNICounterfactualPipeline,
    ADNIDiffusionPipeline,
)
from .metrics import ssim_maps
from .plots import save_png
from .runs import prepare_output_dir
from .slices import NATIVE_SIZE, to_model_input, to_native

DEFAULT_METHOD = DEFAULT_EDIT_METHOD  # the app's page starts at the default method's settings
DEFAULT_STRENGTH = EDIT_DEFAULTS[DEFAULT_METHOD]["strength"]
DEFAULT_GUIDANCE = EDIT_DEFAULTS[DEFAULT_METHOD]["guidance_scale"]
BRAIN_LEVEL = 10  # grey level above which a pixel is brain (the background is black)
PANEL_ROWS = 12  # slices shown in the panel figure; the per-slice maps cover all of them


@dataclass
class Source:
    """One slice to edit: its pixels as the data layer decodes them, its label and its name."""

    path: Path
    pixels: np.ndarray  # (H, W) uint8
    label: int
    note: str | None  # the conversion done on reading, if any
    position: float | None = None  # its level in its patient's stack (None: unknown)


@lru_cache(maxsize=64)
def _folder_names(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))


def level_beside(path: Path) -> float | None:
    """A slice's level among its patient's slices in the same folder (``data.slice_positions``),
    or None when the folder does not hold two slice numbers of that patient."""
    if slice_number(path.name) is None:
        return None
    patient = patient_id(path.name)
    names = [n for n in _folder_names(path.parent) if patient_id(n) == patient]
    if len({slice_number(n) for n in names} - {None}) < 2:
        return None
    return float(slice_positions(names, [patient] * len(names))[names.index(path.name)])


def read_source(path, label=None, position: float | None = None) -> Source:
    """A slice file -> Source; the label is given or the name of its folder (AD/NC); the level
    is given or read from the patient's other slices beside it (``level_beside``)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--image {path} is a folder; give slice files (e.g. {path}/*.jpeg), or "
                        "the data set with --data and --split")
    if not path.is_file():
        raise UserError(f"--image {path}: no such file")
    if label is None:
        if path.parent.name.upper() not in CLASS_NAMES:
            raise UserError(f"--image {path}: its folder is not AD or NC, so its label is "
                            "unknown; give it with --label AD|NC")
        label = path.parent.name
    label = label_id(label)  # a bad label is named before the file is read
    pixels, note = read_slice_file(path, f"--image {path}")
    return as_source(path, pixels, note, label, position)


def as_source(path: Path, pixels: np.ndarray, note: str | None, label,
              position: float | None = None) -> Source:
    """A grey slice read from ``path`` -> Source at the native size (odd sizes are resized and
    cropped as the model sees them, which ``note`` then says); the level as in read_source."""
    if pixels.shape != NATIVE_SIZE[::-1]:  # as the model sees it, back in the native frame
        pixels = to_native(to_model_input(pixels, max(NATIVE_SIZE)))
        note = (f"{note}, " if note else "") + \
            f"resized and cropped to {NATIVE_SIZE[0]}x{NATIVE_SIZE[1]}"
    return Source(Path(path), pixels, label_id(label), note,
                  level_beside(Path(path)) if position is None else float(position))


def sources_from_data(root, split: str, num_images: int) -> list[Source]:
    """``num_images`` slices of ``split`` spread over its files (both classes, many patients),
    each with its level in its patient's stack."""
    report = scan(root, splits=(split,))
    if report.problems:
        raise UserError(f"{root} is not a usable AD_NC folder:\n  " + "\n  ".join(report.problems))
    files = report.of_split(split)
    levels = slice_positions([f.relpath for f in files], [f.patient for f in files])
    return [read_source(files[i].path, CLASS_NAMES[files[i].label], levels[i])
            for i in spread_indices(len(files), num_images)]


def check_edit_args(strength: float, to: str) -> None:
    """Before any slow step: --strength in (0, 1], --to a label or flip."""
    if not 0 < strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {strength}")
    if to.lower() != "flip":
        try:
            label_id(to)
        except UserError as err:
            raise UserError(f"--to: {err}, or flip") from None


MAX_DRAWS = 1000


def check_method(method: str, change_from: str = "null_edit",
                 num_draws: int = DEFAULT_DRAWS) -> None:
    """--method one of EDIT_METHODS; the posterior method's --change_from and --draws."""
    if method not in EDIT_METHODS:
        raise UserError(f"--method {method!r}: use one of {', '.join(EDIT_METHODS)}")
    if method == "posterior" and change_from != "null_edit":
        raise UserError(f"--change_from {change_from} does not apply to --method posterior "
                        "(its change is between the two labels' predictions); leave it out or "
                        "use --method inversion")
    if not (isinstance(num_draws, int) and 1 <= num_draws <= MAX_DRAWS):
        raise UserError(f"--draws must be a whole number from 1 to {MAX_DRAWS} (each draw is "
                        f"a network pass per slice), got {num_draws!r}")


def target_ids(sources: list[Source], to: str) -> list[int]:
    """``to``: AD, NC or flip (each slice to the other label)."""
    if to.lower() == "flip":
        return [1 - s.label for s in sources]
    return [label_id(to)] * len(sources)


def make_editor(pipe: ADNIDiffusionPipeline) -> ADNICounterfactualPipeline:
    """The counterfactual pipeline on a loaded generator's components."""
    if not isinstance(pipe, ADNIDiffusionPipeline):
        raise UserError(f"edits need a latent diffusion model; this is a {type(pipe).__name__} "
                        "(pass the OUTPUT_DIR of train_unet.py)")
    editor = ADNICounterfactualPipeline(**pipe.components, **{
        k: v for k, v in pipe.config.items() if not k.startswith("_")
        and k not in pipe.components})
    editor.set_progress_bar_config(disable=True)
    return editor


def run_edits(editor, sources: list[Source], targets: list[int], *, strength: float,
              method: str, guidance_scale: float, num_inference_steps: int, seed: int,
              batch_size: int, change_from: str = "null_edit", refine: str = DEFAULT_REFINE,
              num_draws: int = DEFAULT_DRAWS, progress: bool = True) -> np.ndarray:
    """(N, H, W) uint8 counterfactuals at each source's native size (the model's 256x240).

    Each slice's noise (SDEdit's, the posterior method's draws) comes from its own seed, so
    batching does not change what is drawn; the pixels agree across batch sizes up to float
    rounding (a grey level), and bit for bit only at the same batch size.
    """
    from tqdm.auto import tqdm

    check_method(method, change_from, num_draws)
    levels = editor.level_conditioned
    unknown = [s.path.name for s in sources if levels and s.position is None]
    if unknown:
        raise UserError(f"{unknown[0]}: this model is level-conditioned and the slice's level "
                        "is unknown (no other slices of its patient beside it); give it with "
                        "--slice_position (0 = the patient's lowest slice, 1 = its highest)")
    outs = []
    for start in tqdm(range(0, len(sources), batch_size), desc="edit", disable=not progress,
                      leave=False):
        batch = sources[start : start + batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i)
                for i in range(len(batch))]
        images = editor([s.pixels for s in batch], [s.label for s in batch],
                        targets[start : start + len(batch)], strength=strength, method=method,
                        guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                        generator=gens, change_from=change_from, refine=refine,
                        num_draws=num_draws, output_type="np",
                        slice_positions=[s.position for s in batch] if levels else None).images
        outs.append(np.rint(images[..., 0] * 255).astype(np.uint8))
    return np.concatenate(outs)


# ----------------------------------------------------------------------------- measures


def brain_mask(pixels: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 -> where the brain is: above the black background, holes filled."""
    return np.stack([ndi.binary_fill_holes(p > BRAIN_LEVEL) for p in pixels.reshape(
        -1, *pixels.shape[-2:])]).reshape(pixels.shape)


def judge_target_probability(judge, pixels: np.ndarray, targets) -> np.ndarray:
    """The judge's probability of each slice's target label (slices as the model sees them)."""
    squares = np.stack([to_model_input(p, judge.resolution) for p in pixels])[:, None]
    probs = judge.probabilities(torch.from_numpy(squares))
    return probs[np.arange(len(pixels)), np.asarray(targets)]


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def per_slice_numbers(sources, edited: np.ndarray, targets, judge) -> list[dict]:
    """What edit.json records per slice (grey levels 0-255 for changes)."""
    source = np.stack([s.pixels for s in sources])
    same_size = all(s.pixels.shape == edited.shape[1:] for s in sources)
    ssim = ssim_maps(torch.from_numpy(source)[:, None], torch.from_numpy(edited)[:, None]) \
        .mean((1, 2)).numpy() if same_size else [float("nan")] * len(sources)
    before = judge_target_probability(judge, source, targets)
    after = judge_target_probability(judge, edited, targets)
    change = np.abs(edited.astype(float) - source)
    brain = brain_mask(source)
    return [{"file": str(s.path), "source_label": CLASS_NAMES[s.label],
             "target_label": CLASS_NAMES[t], "p_target_before": round(float(b), 4),
             "p_target_after": round(float(a), 4), "ssim_to_source": round(float(q), 4),
             "mean_abs_change_in_brain": round(masked_mean(c, m), 3),
             **({"converted": s.note} if s.note else {})}
            for s, t, b, a, q, c, m in zip(sources, targets, before, after, ssim, change, brain,
                                           strict=True)]


# ----------------------------------------------------------------------------- pictures


def difference_scale(sources, edited: np.ndarray) -> float:
    """One symmetric scale for every map of a run: the 99th percentile of |change| in brains."""
    source = np.stack([s.pixels for s in sources]).astype(float)
    change = np.abs(edited - source)[brain_mask(source.astype(np.uint8))]
    return max(float(np.percentile(change, 99)) if change.size else 1.0, 1.0)


def _draw_difference(ax, source: np.ndarray, diff: np.ndarray, scale: float):
    """The source in grey, the signed change over it (RdBu_r: red brighter, blue darker),
    opaque where the change reaches ``scale``."""
    ax.imshow(source, cmap="gray", vmin=0, vmax=255)
    alpha = np.clip(np.abs(diff) / scale, 0.0, 1.0)
    image = ax.imshow(diff, cmap="RdBu_r", vmin=-scale, vmax=scale, alpha=alpha)
    ax.axis("off")
    return image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_difference_map(source: np.ndarray, edited: np.ndarray, scale: float, path: Path,
                        title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 2.9))
    image = _draw_difference(ax, source, edited.astype(float) - source, scale)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="change (grey levels)")
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def save_panel(sources, edited: np.ndarray, rows: list[dict], scale: float, path: Path,
               heading: str) -> Path:
    """Source | counterfactual | difference, one row per slice (the first PANEL_ROWS)."""
    plt = _pyplot()
    n = min(len(sources), PANEL_ROWS)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.3 * n + 0.6), squeeze=False,
                             layout="constrained")
    image = None
    for ax_row, source, out, row in zip(axes, sources, edited, rows, strict=False):
        ax_row[0].imshow(source.pixels, cmap="gray", vmin=0, vmax=255)
        ax_row[0].set_title(f"{source.path.name} ({row['source_label']})", fontsize=7)
        ax_row[1].imshow(out, cmap="gray", vmin=0, vmax=255)
        ax_row[1].set_title(f"-> {row['target_label']}: p {row['p_target_before']:.2f} -> "
                            f"{row['p_target_after']:.2f}", fontsize=7)
        image = _draw_difference(ax_row[2], source.pixels, out.astype(float) - source.pixels,
                                 scale)
        ax_row[2].set_title(f"change, SSIM {row['ssim_to_source']:.3f}", fontsize=7)
        for ax in ax_row[:2]:
            ax.axis("off")
    fig.colorbar(image, ax=axes[:, 2].tolist(), fraction=0.05, label="change (grey levels)")
    shown = f" (first {n} of {len(sources)})" if n < len(sources) else ""
    fig.suptitle(heading + shown, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the run


def describe_edit(method: str, strength: float, settings: dict,
                  num_draws: int = DEFAULT_DRAWS) -> str:
    """One line naming an edit's settings, for panels and reports."""
    if method == "posterior":
        return (f"posterior, noise levels up to {strength}, {num_draws} draws, extrapolation "
                f"{settings['guidance_scale']:g}")
    return (f"{method}, strength {strength}, guidance {settings['guidance_scale']:g}, "
            f"{settings['num_inference_steps']} DDIM steps")


def edit_to_folder(pipe, judge, sources: list[Source], to: str, out_dir, *, settings: dict,
                   strength: float, method: str, seed: int, batch_size: int,
                   change_from: str = "null_edit", refine: str = DEFAULT_REFINE,
                   num_draws: int = DEFAULT_DRAWS, record: dict | None = None) -> dict:
    """Edit ``sources`` towards ``to`` and write OUT/<stem>.png, OUT/difference/<stem>.png,
    OUT/panel.png and OUT/edit.json; returns the edit.json record."""
    stems = [s.path.stem for s in sources]
    if len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})[0]
        raise UserError(f"two inputs are named {twice}: outputs are named after their source; "
                        "edit them in separate runs")
    check_edit_args(strength, to)
    targets = target_ids(sources, to)
    out_dir = prepare_output_dir(out_dir, "edit.json")
    t0 = time.time()
    edited = run_edits(make_editor(pipe), sources, targets, strength=strength, method=method,
                       guidance_scale=settings["guidance_scale"],
                       num_inference_steps=settings["num_inference_steps"], seed=seed,
                       batch_size=batch_size, change_from=change_from, refine=refine,
                       num_draws=num_draws)
    seconds = time.time() - t0
    rows = per_slice_numbers(sources, edited, targets, judge)
    scale = difference_scale(sources, edited)
    for source, out, row in zip(sources, edited, rows, strict=True):
        row["output"] = save_png(out, out_dir / f"{source.path.stem}.png").name
        row["difference"] = save_difference_map(
            source.pixels, out, scale, out_dir / "difference" / f"{source.path.stem}.png",
            f"{source.path.name}: {row['source_label']} -> {row['target_label']}"
        ).relative_to(out_dir).as_posix()
    heading = f"{describe_edit(method, strength, settings, num_draws)}; red brighter, blue darker"
    save_panel(sources, edited, rows, scale, out_dir / "panel.png", heading)
    flipped = [r["p_target_after"] > 0.5 for r in rows if r["target_label"] != r["source_label"]]
    record = {**(record or {}), "method": method, "strength": strength, "to": to,
              "change_from": change_from, "refine": refine, "seed": seed,
              **({"num_draws": num_draws} if method == "posterior" else {}), **settings,
              "difference_scale": round(scale, 2), "seconds": round(seconds, 1),
              "summary": {
                  "slices": len(rows),
                  "flip_rate": round(float(np.mean(flipped)), 4) if flipped else None,
                  "mean_p_target_before": round(float(np.mean([r["p_target_before"]
                                                               for r in rows])), 4),
                  "mean_p_target_after": round(float(np.mean([r["p_target_after"]
                                                              for r in rows])), 4),
                  "mean_ssim_to_source": round(float(np.nanmean([r["ssim_to_source"]
                                                                 for r in rows])), 4),
                  "mean_abs_change_in_brain": round(float(np.nanmean(
                      [r["mean_abs_change_in_brain"] for r in rows])), 3)},
              "converted": [{"file": s.path.name, "reason": s.note} for s in sources if s.note],
              "slices": rows}
    write_json(out_dir / "edit.json", record)
    return record
