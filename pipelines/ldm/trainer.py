"""Stage 2: train the class-conditioned UNet on cached VAE latents, save the pipeline.

Writes OUTPUT_DIR as a diffusers folder (model_index.json, vae/, unet/ with the EMA weights,
scheduler/), a model card README.md, metrics.json, config.yaml, samples/ grids and logs/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import Config, validate
from ..data import CLASS_NAMES, NULL_LABEL, load_train_val
from ..files import write_json
from ..hub import card_header, save_pipeline, usage_snippet
from ..plots import save_grid, to_uint8
from ..runs import check_writable_dir, claim_run_dir, folder_digest
from ..training import (
    EMAWeights,
    count_parameters,
    log_image,
    make_accelerator,
    prepare_run,
    run_training,
    scale_for_processes,
    scaling_note,
)
from ..vae.model import load_vae, vae_downsample_factor
from .latents import build_latent_cache
from .objective import diffusion_loss, drop_labels, training_scheduler
from .pipeline_adni import ADNIDiffusionPipeline, make_scheduler
from .stack import next_lower_slices, sample_with_neighbours, typical_stack_length
from .unet import build_unet


def build_pipeline(vae, unet, noise_scheduler, sample_cfg,
                   stack_length: int | None = None) -> ADNIDiffusionPipeline:
    """The pipeline as saved: the config's sampler, steps and guidance become its defaults
    (``stack_length``: a stack-conditioned model's slices per training patient)."""
    return ADNIDiffusionPipeline(
        vae=vae, unet=unet, scheduler=make_scheduler(sample_cfg.scheduler, noise_scheduler.config),
        guidance_scale=sample_cfg.guidance_scale,
        num_inference_steps=sample_cfg.num_inference_steps,
        guidance_interval=sample_cfg.guidance_interval or None, stack_length=stack_length)


def interval_text(interval: list) -> str:
    if not interval:
        return " at every step"
    return f" where the noise level sigma is in ({interval[0]:g}, {interval[1]:g}]"


def model_card(cfg: Config, data_root, metrics: dict) -> str:
    tags = ["latent-diffusion", "medical-imaging", "brain-mri", "adni", "class-conditional"]
    level_text = ("conditioned on the label and the slice level (0 = a patient's lowest slice, "
                  "1 = its highest)" if cfg.unet.level_conditioning else "label-conditioned")
    if cfg.unet.level_conditioning and cfg.unet.stack_conditioning:
        level_text += (f", and on the slice below (synthetic subjects of up to "
                       f"{metrics['stack_length']} slices: `pipe.subjects`)")
    return card_header(tags, "ADNIDiffusionPipeline") + f"""
# ADNI AD/NC class-conditioned latent diffusion

Generates 8-bit greyscale axial brain MRI slices ({cfg.data.resolution} px, cropped back to
256x240) of Alzheimer's disease (AD) or normal controls (NC).

- Data: `{data_root}` ({metrics['train_images']} training slices from
  {metrics['train_patients']} patients); labels {', '.join(CLASS_NAMES)} = ids 0, 1,
  null label id {NULL_LABEL}
- UNet: {metrics['parameters'] / 1e6:.1f}M parameters, {level_text},
  {cfg.unet.prediction_type}, min-SNR gamma {cfg.unet.snr_gamma}, EMA {cfg.unet.ema_decay},
  label dropout {cfg.unet.cond_drop_prob}
- Trained {metrics['steps']} steps ({metrics['wall_seconds'] / 60:.1f} min,
  {metrics['img_per_s']:.1f} img/s)
- Sampling defaults (saved with the model, used by every entry point unless overridden):
  {cfg.sample.scheduler}, {cfg.sample.num_inference_steps} steps, guidance
  {cfg.sample.guidance_scale}{interval_text(cfg.sample.guidance_interval)}

## Use it with diffusers alone

The folder carries its pipeline code (`pipeline_adni.py`, `slices.py`), so it loads without the
repository that trained it:

{usage_snippet('pipe(["AD", "NC"], num_images_per_label=2, generator=torch.manual_seed(0)).images')}

`class_labels` takes names or ids (NC = 0, AD = 1); a level-conditioned model also takes
`slice_positions` (numbers in [0, 1]); `output_type` "pil", "np" or "pt";
`native_size=False` keeps the square model output.

Full training config:

```json
{json.dumps(cfg.to_dict(), indent=2)}
```
"""


def train_unet(cfg: Config, vae_path, data_root, output_dir, resume: str | None = None,
               cache_dir: str | Path | None = None, overwrite: bool = False) -> dict:
    validate(cfg)
    if cache_dir:  # written to: never inside the data or the VAE
        check_writable_dir(cache_dir, "--cache_dir", reads=(data_root, vae_path))
    output_dir = claim_run_dir(output_dir, "unet", resume, overwrite,
                               reads=(vae_path, data_root), config=cfg,
                               inputs={"vae": folder_digest(vae_path)})
    accelerator = make_accelerator(cfg.unet, output_dir)
    ucfg = scale_for_processes(cfg.unet, accelerator.num_processes)
    if note := scaling_note(cfg.unet, ucfg):
        accelerator.print(note)
    vae = load_vae(vae_path).to(accelerator.device).eval().requires_grad_(False)
    if vae.config.sample_size != cfg.data.resolution:
        accelerator.print(f"note: VAE trained at {vae.config.sample_size} px, data at "
                          f"{cfg.data.resolution} px")
    train_set, _ = load_train_val(data_root, cfg.data, progress=accelerator.is_local_main_process,
                                  num_workers=cfg.unet.num_workers)
    accelerator.print(f"train: {train_set.summary()}")
    cache = build_latent_cache(vae, train_set, cache_dir or output_dir / "latent_cache",
                               cfg.data.flip, accelerator)
    scaling = float(vae.config.scaling_factor)
    latent_size = cfg.data.resolution // vae_downsample_factor(vae)
    unet = build_unet(ucfg, vae.config.latent_channels, latent_size)
    if ucfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = training_scheduler(ucfg)
    ema = EMAWeights(unet, ucfg.ema_decay, ucfg.ema_warmup)
    unet, optimizer, lr_scheduler = prepare_run(accelerator, unet, unet.parameters(), ucfg, cfg,
                                                output_dir, "unet")
    accelerator.print(f"UNet: {count_parameters(unet) / 1e6:.2f}M parameters on "
                      f"{tuple(cache.mean.shape[1:])} latents, {accelerator.num_processes} "
                      f"process(es), {accelerator.mixed_precision}")

    stacked = ucfg.level_conditioning and ucfg.stack_conditioning
    below = next_lower_slices(train_set.patients, cache.positions) if stacked else None
    stack_length = typical_stack_length(train_set.patients) if stacked else None

    def get_batch(indices, generator):  # generator: this micro-step's, from run_training
        neighbours = None
        if stacked:
            latents, neighbours = sample_with_neighbours(cache, indices, below, scaling,
                                                         ucfg.neighbour_drop_prob, generator)
            neighbours = neighbours.to(accelerator.device)
        else:
            latents = cache.sample(indices, scaling, generator)
        labels = drop_labels(cache.labels[indices], ucfg.cond_drop_prob, generator)
        return latents.to(accelerator.device), labels.to(accelerator.device), \
            cache.positions[indices].to(accelerator.device), neighbours

    def loss_fn(model, batch, step):
        latents, labels, positions, neighbours = batch
        loss = diffusion_loss(model, noise_scheduler, latents, labels, ucfg.snr_gamma,
                              slice_positions=positions, neighbours=neighbours).mean()
        return loss, {"loss": loss.detach()}

    def ema_unet():
        return ema.copy(accelerator.unwrap_model(unet))

    def on_validation(step):
        pipe = build_pipeline(vae, ema_unet(), noise_scheduler, cfg.sample, stack_length).to(
            accelerator.device)
        pipe.set_progress_bar_config(disable=True)
        n = ucfg.num_validation_images
        # a level-conditioned model's rows run from the lowest level to the highest
        levels = np.tile(np.linspace(0, 1, n), len(CLASS_NAMES)) if pipe.level_conditioned \
            else None
        images = pipe(list(CLASS_NAMES), num_images_per_label=n,
                      generator=torch.Generator().manual_seed(0), output_type="pt",
                      native_size=False, slice_positions=levels).images
        path = save_grid(to_uint8(images * 2 - 1),
                         output_dir / "samples" / f"step-{step:06d}.png", nrow=n)
        log_image(accelerator, "samples", np.asarray(Image.open(path)), step)

    t0 = time.time()
    state = run_training(accelerator=accelerator, model=unet, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, loss_fn=loss_fn, get_batch=get_batch,
                         num_examples=len(cache), cfg=ucfg, output_dir=output_dir, resume=resume,
                         ema=ema, on_validation=on_validation, desc="unet")
    metrics = {}
    if accelerator.is_main_process:
        elapsed = time.time() - t0
        metrics = {
            "steps": state.step, "wall_seconds": round(state.wall_seconds, 1),
            "images_seen": state.images_seen,
            "img_per_s": state.images_seen / max(state.wall_seconds, 1e-9), **state.throughput,
            "this_run_seconds": round(elapsed, 1), "parameters": count_parameters(unet),
            "latent_shape": list(cache.mean.shape[1:]), "train_images": len(train_set),
            "train_patients": len(set(train_set.patients)), "vae": str(vae_path),
            "latent_cache": cache.key, "output_dir": str(output_dir),
            "class_names": list(CLASS_NAMES), "level_conditioned": ucfg.level_conditioning,
            "stack_conditioned": stacked, "stack_length": stack_length,
            "labels_in_training": np.bincount(cache.labels.numpy(), minlength=2).tolist(),
        }
        pipe = build_pipeline(vae.float(), ema_unet(), noise_scheduler, cfg.sample,
                              stack_length)
        save_pipeline(pipe, output_dir, model_card(cfg, data_root, metrics))
        write_json(output_dir / "metrics.json", metrics)
        accelerator.print(f"saved pipeline to {output_dir} ({state.step} steps)")
    accelerator.end_training()
    return metrics
