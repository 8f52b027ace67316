"""Generate labelled slices from a saved model: per-image seeds, PNGs, a grid, a JSON sidecar."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .config import Config, config_from_dict
from .errors import UserError
from .pipeline import PIPELINES, SlicePipeline, make_scheduler
from .plots import save_grid, save_png
from .training import write_json


def load_pipeline(model_dir: str | Path, device: str = "cpu") -> SlicePipeline:
    """Load a saved pipeline offline, with a clear message when the folder is not one."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UserError(f"no model at {model_dir}; train one (make demo, or train_unet.py) or "
                        "pass --model OUT")
    index = model_dir / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError):
        class_name = None
    if class_name not in PIPELINES:
        raise UserError(f"{model_dir} is not a model of this project (no model_index.json naming "
                        f"{' or '.join(PIPELINES)}); pass the OUTPUT_DIR of train_unet.py or "
                        "train_stylegan2.py")
    pipe = PIPELINES[class_name].from_pretrained(model_dir)
    return pipe.to(resolve_device(device))


def use_scheduler(pipe: SlicePipeline, name: str | None) -> None:
    """Swap in the named sampler on a diffusion pipeline; a GAN has none and ignores it."""
    if name and hasattr(pipe, "scheduler"):
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return device


def saved_config(model_dir: str | Path) -> Config:
    path = Path(model_dir) / "config.yaml"
    return config_from_dict(yaml.safe_load(path.read_text())) if path.is_file() else Config()


def image_seed(seed: int, label: int, index: int) -> int:
    """Each image has its own seed, so images do not depend on the batch size."""
    return (seed * 1_000_003 + label * 100_003 + index) % (2**63)


def generate(pipe: SlicePipeline, label: str, num_images: int, *, seed: int,
             batch_size: int, guidance_scale: float, num_inference_steps: int,
             output_type: str = "np", progress: bool = True):
    """``num_images`` images of one label, batched, each from its own seeded generator."""
    label_id = pipe.label_ids([label])[0]
    pipe.set_progress_bar_config(disable=True)
    outs = []
    bar = tqdm(total=num_images, desc=f"sample {label}", disable=not progress, leave=False)
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        gens = [torch.Generator().manual_seed(image_seed(seed, label_id, start + i))
                for i in range(n)]
        out = pipe([label_id], num_images_per_label=n, guidance_scale=guidance_scale,
                   num_inference_steps=num_inference_steps, generator=gens,
                   output_type=output_type).images
        outs.append(out)
        bar.update(n)
    bar.close()
    return np.concatenate(outs) if output_type == "np" else torch.cat(outs)


def sample_to_folder(model_dir, labels: list[str], out_dir, *, num_images: int, seed: int,
                     batch_size: int, guidance_scale: float, num_inference_steps: int,
                     scheduler: str, device: str = "cpu") -> dict:
    """Write OUT/<label>/<label>_NNNN.png, OUT/grid_<label>.png and OUT/sample.json."""
    pipe = load_pipeline(model_dir, device)
    use_scheduler(pipe, scheduler)
    out_dir = Path(out_dir)
    record = {"model": str(model_dir), "seed": seed, "num_inference_steps": num_inference_steps,
              "guidance_scale": guidance_scale, "scheduler": scheduler, "labels": {}}
    for label in labels:
        t0 = time.time()
        images = generate(pipe, label, num_images, seed=seed, batch_size=batch_size,
                          guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
        files = [save_png(img, out_dir / label / f"{label}_{i:04d}.png").name
                 for i, img in enumerate(images)]
        save_grid(images, out_dir / f"grid_{label}.png", nrow=8)
        record["labels"][label] = {"num_images": len(files), "folder": label,
                                   "grid": f"grid_{label}.png",
                                   "seconds": round(time.time() - t0, 2)}
    write_json(out_dir / "sample.json", record)
    return record
