"""Generate labelled slices from a saved model: one place that decides how a model samples.

The sampler, steps and guidance saved with a model (its ``scheduler/`` folder and
``model_index.json``) are the defaults of ``sample.py``, ``evaluate.py``, ``embed.py
--with_generated`` and the demo; :func:`sampling_settings` applies flags over them the same way
for all. Per-image seeds make images independent of the batch size.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .config import Config, config_from_dict
from .errors import UserError
from .files import write_json
from .hub import load_pipeline_folder, pipeline_class_name, read_model_index
from .ldm.pipeline_adni import SCHEDULERS, ADNIDiffusionPipeline, interval_value, make_scheduler
from .plots import save_grid, save_png
from .runs import prepare_output_dir
from .slices import SlicePipeline, to_pixels
from .stylegan2.networks import StyleGAN2Generator
from .stylegan2.pipeline_stylegan2 import StyleGAN2Pipeline

MAX_GUIDANCE = 100.0  # classifier-free guidance beyond this only saturates the images
PIPELINES = {cls.__name__: cls for cls in (ADNIDiffusionPipeline, StyleGAN2Pipeline)}
CUSTOM_COMPONENTS = {"StyleGAN2Generator": StyleGAN2Generator}


def load_pipeline(model_dir: str | Path, device: str = "cpu") -> SlicePipeline:
    """This repository's pipeline class from a saved folder, with a clear message if it is none."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UserError(f"no model at {model_dir}; train one (make demo, or train_unet.py) or "
                        "pass --model OUT")
    try:
        index = read_model_index(model_dir)
    except ValueError:
        index = {}
    class_name = pipeline_class_name(index)
    if class_name not in PIPELINES:
        raise UserError(f"{model_dir} is not a model of this project (no model_index.json naming "
                        f"{' or '.join(PIPELINES)}); pass the OUTPUT_DIR of train_unet.py or "
                        "train_stylegan2.py")
    try:
        pipe = load_pipeline_folder(model_dir, PIPELINES, CUSTOM_COMPONENTS)
    except ValueError as err:
        raise UserError(f"{err}; the folder is damaged or incomplete: train it again, or copy "
                        "it again from where it was trained") from None
    if class_name == "ADNIDiffusionPipeline" and "guidance_scale" not in index:
        # saved before steps and guidance travelled in model_index.json: take the run's config
        sample = saved_config(model_dir).sample
        pipe.register_to_config(guidance_scale=sample.guidance_scale,
                                num_inference_steps=sample.num_inference_steps)
    return pipe.to(resolve_device(device))


def resolve_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against the devices present."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    present = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(count)] if count else [])
    if device not in present:
        raise UserError(f"--device {device} is not on this machine; present: "
                        f"{', '.join(present)} (or auto)")
    return device


def saved_config(model_dir: str | Path) -> Config:
    """The config a model was trained with (its folder's config.yaml), or the defaults."""
    path = Path(model_dir) / "config.yaml"
    if not path.is_file():
        return Config()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}); restore it from the run "
                        "folder or delete it to use the defaults") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a saved config (a mapping of sections)")
    return config_from_dict(raw)


def sampling_settings(pipe: SlicePipeline, scheduler: str | None = None,
                      num_inference_steps: int | None = None,
                      guidance_scale: float | None = None,
                      guidance_interval: list[float] | None = None) -> dict:
    """The model's saved sampler, steps and guidance, with any given flag over them.

    Swaps the named scheduler into ``pipe``. A GAN has none of the three: giving one is an error.
    Returns the settings a call then uses (``{}`` for a GAN), to pass as keyword arguments.
    """
    given = {"scheduler": scheduler, "num_inference_steps": num_inference_steps,
             "guidance_scale": guidance_scale, "guidance_interval": guidance_interval}
    settings = pipe.sampling_settings()
    if not settings:
        used = [f"--{k}" for k, v in given.items() if v is not None]
        if used:
            raise UserError(f"{', '.join(used)} does not apply to a {type(pipe).__name__} (no "
                            "sampler, steps or guidance); leave it out")
        return {}
    if scheduler is not None:
        if scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler {scheduler!r}; use one of "
                            f"{', '.join(SCHEDULERS)}")
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    settings |= {k: v for k, v in given.items() if v is not None}
    steps, guidance = settings["num_inference_steps"], settings["guidance_scale"]
    most = int(pipe.scheduler.config.num_train_timesteps)
    if not isinstance(steps, int) or not 1 <= steps <= most:
        raise UserError(f"--num_inference_steps must be an integer from 1 to {most} (the "
                        f"model's training timesteps), got {steps}")
    if not (math.isfinite(guidance) and guidance >= 1):
        raise UserError(f"--guidance_scale must be a finite number >= 1 (1 means no guidance: "
                        f"the conditional model alone), got {guidance}")
    if guidance > MAX_GUIDANCE:
        raise UserError(f"--guidance_scale must be at most {MAX_GUIDANCE:g}, got {guidance:g}: "
                        "past that the guided step saturates every pixel (usual values: 1-10)")
    if "guidance_interval" in settings:  # absent from models made before it existed
        try:
            settings["guidance_interval"] = interval_value(settings["guidance_interval"])
        except ValueError:
            raise UserError(f"--guidance_interval takes two finite noise levels LOW HIGH with "
                            f"0 <= LOW < HIGH (guidance acts where LOW < sigma <= HIGH; 0 inf: "
                            f"every step), got {settings['guidance_interval']}") from None
    return settings


def call_kwargs(settings: dict) -> dict:
    """The part of the settings a pipeline call takes (the scheduler is already swapped in)."""
    return {k: v for k, v in settings.items() if k != "scheduler"}


def image_seed(seed: int, label: int, index: int) -> int:
    """Each image has its own seed, so images do not depend on the batch size."""
    return (seed * 1_000_003 + label * 100_003 + index) % (2**63)


def takes_levels(pipe: SlicePipeline) -> bool:
    """Whether a loaded model takes slice levels (a StyleGAN2 or label-only model does not)."""
    return bool(getattr(pipe, "level_conditioned", False))


def check_level_model(pipe: SlicePipeline, model_dir) -> None:
    if not takes_levels(pipe):
        raise UserError(f"{model_dir} is a label-only model (trained without slice levels), so "
                        "it cannot take --slice_position; leave the flag out, or train a "
                        "level-conditioned model with --unet.level_conditioning true")


def check_images(images: torch.Tensor, label, settings: dict) -> None:
    """Refuse a generated batch holding a non-finite or blank (one grey level) image: saved, it
    would pass for a result. ``images``: the pipeline's float output."""
    flat = images.detach().float().flatten(1)
    bad_values = ~torch.isfinite(flat).all(dim=1)
    pixels = to_pixels(flat.nan_to_num(0.0) * 2 - 1)
    blank = pixels.amax(dim=1) == pixels.amin(dim=1)
    if bad_values.any() or blank.any():
        what = "non-finite values" if bad_values.any() else "one grey level only (blank)"
        used = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "guidance_interval")
        raise UserError(f"{int((bad_values | blank).sum())} of {len(flat)} generated {label} "
                        f"images hold {what}, so nothing more was saved ({used or 'no sampling'}"
                        " settings); lower --guidance_scale (usual: 1-10) or raise "
                        "--num_inference_steps; if it persists the model itself diverged "
                        "(see its metrics.json): train it again")


def sampling_label(pipe: SlicePipeline, label) -> int:
    """The model's id of ``label`` with the progress bar off: what a seeded sampling loop needs
    first (an unknown label is the user's mistake)."""
    try:
        label_id = pipe.label_ids([label])[0]
    except ValueError as err:
        raise UserError(str(err)) from None
    pipe.set_progress_bar_config(disable=True)
    return label_id


def seeded_generators(seed: int, label_id: int, first: int, n: int) -> list[torch.Generator]:
    """One generator per image ``first`` .. ``first + n - 1``: the same draws at any batching."""
    return [torch.Generator().manual_seed(image_seed(seed, label_id, first + i)) for i in range(n)]


def generate(pipe: SlicePipeline, label, num_images: int, *, seed: int, batch_size: int,
             settings: dict, native_size: bool = True, latents: bool = False,
             progress: bool = True, positions=None, callback=None, first: int = 0):
    """``num_images`` images of one label, batched, each from its own seeded generator: the
    same draws at any ``batch_size``, the pixels equal across batch sizes up to float rounding.

    ``positions``: a level-conditioned model's level, one number or one per image (None: the
    pipeline draws them). An image's seed does not depend on its level, so image i at two
    levels starts from the same noise.

    Returns (N, H, W) uint8 pixels (native 256x240, or the model's square), or with
    ``latents=True`` the scaled latents of a diffusion model. ``callback(done, total)`` is called
    after each batch (the app's progress bar). ``first``: the index of the first image, so
    images ``first`` .. ``first + num_images - 1`` of a larger set (one process's share, or a
    sample written in parts) are the same as in the whole set. A non-finite or blank image is an
    error (:func:`check_images`).
    """
    if positions is not None:
        positions = np.broadcast_to(np.asarray(positions, dtype=np.float64), (num_images,))
    label_id = sampling_label(pipe, label)
    outs = []
    bar = tqdm(total=num_images, desc=f"sample {label}", disable=not progress, leave=False)
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        gens = seeded_generators(seed, label_id, first + start, n)
        levels = {} if positions is None else \
            {"slice_positions": positions[start : start + n].tolist()}
        try:
            out = pipe([label_id], num_images_per_label=n, generator=gens,
                       output_type="latent" if latents else "pt", native_size=native_size,
                       **call_kwargs(settings), **levels).images
        except ValueError as err:
            raise UserError(str(err)) from None
        if latents:
            if not torch.isfinite(out).all():
                check_images(out, label, settings)
        else:
            check_images(out, label, settings)
        outs.append(out if latents else to_pixels(out * 2 - 1)[:, 0].numpy())
        bar.update(n)
        if callback is not None:
            callback(start + n, num_images)
    bar.close()
    return torch.cat(outs) if latents else np.concatenate(outs)


GRID_IMAGES = 64


def sample_to_folder(model_dir, labels: list[str], out_dir, *, num_images: int, seed: int,
                     batch_size: int, settings: dict | None = None, device: str = "cpu",
                     positions: list[float] | None = None, **overrides) -> dict:
    """Write OUT/<label>/<label>_NNNN.png, OUT/grid_<label>.png and OUT/sample.json.

    ``positions`` (a level-conditioned model): ``num_images`` images at each level, named
    <label>_pos<level>_NNNN.png; the grid has a column per level (image i of every column
    starts from the same noise). OUT is emptied first when an earlier sample.py wrote it,
    refused when it holds other files.

    ``overrides``: scheduler / num_inference_steps / guidance_scale flags over the saved ones.
    """
    pipe = load_pipeline(model_dir, device)
    if positions is not None:
        check_level_model(pipe, model_dir)
    settings = sampling_settings(pipe, **overrides) if settings is None else settings
    out_dir = prepare_output_dir(out_dir, "sample.json")
    record = {"model": str(model_dir), "seed": seed, **settings, "slice_positions": positions,
              "labels": {}, "complete": False}
    write_json(out_dir / "sample.json", record)  # marks the folder as this script's from now on
    for label in labels:
        t0 = time.time()
        if positions is None:  # written batch by batch; the grid shows the first GRID_IMAGES
            files, shown = [], []
            bar = tqdm(total=num_images, desc=f"sample {label}", leave=False)
            for start in range(0, num_images, batch_size):
                images = generate(pipe, label, min(batch_size, num_images - start), seed=seed,
                                  batch_size=batch_size, settings=settings, first=start,
                                  progress=False)
                files += [save_png(img, out_dir / label / f"{label}_{start + i:04d}.png").name
                          for i, img in enumerate(images)]
                shown += list(images[:max(GRID_IMAGES - len(shown), 0)])
                bar.update(len(images))
            bar.close()
            save_grid(np.stack(shown), out_dir / f"grid_{label}.png", nrow=8)
        else:
            columns = [generate(pipe, label, num_images, seed=seed, batch_size=batch_size,
                                settings=settings, positions=p) for p in positions]
            files = [save_png(img, out_dir / label / f"{label}_pos{p:.3f}_{i:04d}.png").name
                     for p, column in zip(positions, columns, strict=True)
                     for i, img in enumerate(column)]
            images = np.stack(columns, axis=1).reshape(-1, *columns[0].shape[1:])  # row-major
            save_grid(images, out_dir / f"grid_{label}.png", nrow=len(positions))
        record["labels"][label] = {"num_images": len(files), "folder": label,
                                   "grid": f"grid_{label}.png",
                                   "seconds": round(time.time() - t0, 2)}
    record["complete"] = True
    write_json(out_dir / "sample.json", record)
    return record
