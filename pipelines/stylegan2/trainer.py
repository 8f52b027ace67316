"""The baseline: train the label-conditioned StyleGAN2 with the shared loop, save its pipeline.

Writes OUTPUT_DIR as a diffusers folder (model_index.json, generator/ with the EMA weights), a
model card README.md, metrics.json, config.yaml, samples/ grids and logs/ -- the same layout as
train_unet.py, so sample.py, embed.py and evaluate.py take either model.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from ..config import Config, validate
from ..data import CLASS_NAMES, load_train_val, training_images
from ..errors import UserError
from ..files import write_json
from ..hub import card_header, save_pipeline, usage_snippet
from ..plots import save_grid, to_uint8
from ..runs import claim_run_dir
from ..training import (
    EMAWeights,
    count_parameters,
    make_accelerator,
    prepare_run,
    run_training,
    scale_for_processes,
)
from .networks import StyleGAN2Discriminator, StyleGAN2Generator
from .objective import StyleGAN2TrainingModel
from .pipeline_stylegan2 import StyleGAN2Pipeline


def build_stylegan2(cfg: Config) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    scfg, resolution = cfg.stylegan2, cfg.data.resolution
    if resolution < 8 or resolution & (resolution - 1):
        raise UserError(f"StyleGAN2 needs a power-of-two --resolution >= 8, got {resolution}")
    generator = StyleGAN2Generator(
        resolution=resolution, num_classes=len(CLASS_NAMES), z_dim=scfg.z_dim, w_dim=scfg.w_dim,
        mapping_layers=scfg.mapping_layers, mapping_lr_mul=scfg.mapping_lr_mul,
        channel_base=scfg.channel_base, channel_max=scfg.channel_max)
    discriminator = StyleGAN2Discriminator(resolution, len(CLASS_NAMES), scfg.channel_base,
                                           scfg.channel_max)
    return generator, discriminator


def model_card(cfg: Config, data_root, metrics: dict) -> str:
    tags = ["stylegan2", "gan", "medical-imaging", "brain-mri", "adni", "class-conditional"]
    return card_header(tags, "StyleGAN2Pipeline") + f"""
# ADNI AD/NC label-conditioned StyleGAN2 (baseline)

Generates 8-bit greyscale axial brain MRI slices ({cfg.data.resolution} px, cropped back to
256x240) of Alzheimer's disease (AD) or normal controls (NC); labels {', '.join(CLASS_NAMES)} =
ids 0, 1. The seed project's model family, trained as the latent diffusion model's baseline.

- Data: `{data_root}` ({metrics['train_images']} training slices from
  {metrics['train_patients']} patients)
- Generator {metrics['parameters'] / 1e6:.2f}M parameters, discriminator
  {metrics['discriminator_parameters'] / 1e6:.2f}M; R1 gamma {cfg.stylegan2.r1_gamma},
  path length weight {cfg.stylegan2.pl_weight}, DiffAugment `{cfg.stylegan2.augment}`
- Trained {metrics['steps']} steps ({metrics['wall_seconds'] / 60:.1f} min,
  {metrics['img_per_s']:.1f} img/s)

## Use it with diffusers alone

The folder carries its code (`pipeline_stylegan2.py`, `slices.py`,
`generator/stylegan2_networks.py`), so it loads without the repository that trained it:

{usage_snippet('pipe(["AD", "NC"], num_images_per_label=2, generator=torch.manual_seed(0)).images')}

Full training config:

```json
{json.dumps(cfg.to_dict(), indent=2)}
```
"""


def train_stylegan2(cfg: Config, data_root, output_dir, resume: str | None = None,
                    overwrite: bool = False) -> dict:
    validate(cfg)
    output_dir = claim_run_dir(output_dir, "stylegan2", resume, overwrite, reads=(data_root,),
                               config=cfg)
    accelerator = make_accelerator(cfg.stylegan2, output_dir, find_unused_parameters=True)
    scfg = scale_for_processes(cfg.stylegan2, accelerator.num_processes)
    train_set, _ = load_train_val(data_root, cfg.data, progress=accelerator.is_local_main_process,
                                  num_workers=cfg.stylegan2.num_workers)
    accelerator.print(f"train: {train_set.summary()}")
    generator, discriminator = build_stylegan2(cfg)
    ema = EMAWeights(generator, scfg.ema_decay, scfg.ema_warmup,
                     select=lambda model: model.generator)
    model = StyleGAN2TrainingModel(generator, discriminator, scfg)
    model, optimizer, lr_scheduler = prepare_run(accelerator, model, model.parameters(), scfg,
                                                 cfg, output_dir, "stylegan2")
    accelerator.print(f"StyleGAN2: G {count_parameters(generator) / 1e6:.2f}M, "
                      f"D {count_parameters(discriminator) / 1e6:.2f}M parameters, "
                      f"{accelerator.num_processes} process(es), {accelerator.mixed_precision}")

    def get_batch(indices, generator):  # generator: this micro-step's, from run_training
        images = training_images(train_set.pixels, indices, cfg.data.flip, generator)
        return images.to(accelerator.device), train_set.labels[indices].to(accelerator.device)

    def loss_fn(m, batch, step):
        return m(batch, step)

    def ema_pipeline():
        return StyleGAN2Pipeline(generator=ema.copy(accelerator.unwrap_model(model)))

    def on_validation(step):
        n = scfg.num_validation_images
        images = ema_pipeline().to(accelerator.device)(
            list(CLASS_NAMES), num_images_per_label=n, output_type="pt", native_size=False,
            generator=torch.Generator().manual_seed(0)).images
        save_grid(to_uint8(images * 2 - 1), output_dir / "samples" / f"step-{step:06d}.png",
                  nrow=n)

    t0 = time.time()
    state = run_training(accelerator=accelerator, model=model, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, loss_fn=loss_fn, get_batch=get_batch,
                         num_examples=len(train_set), cfg=scfg, output_dir=output_dir,
                         resume=resume, ema=ema, on_validation=on_validation, desc="stylegan2")
    metrics = {}
    if accelerator.is_main_process:
        metrics = {
            "steps": state.step, "wall_seconds": round(state.wall_seconds, 1),
            "images_seen": state.images_seen,
            "img_per_s": state.images_seen / max(state.wall_seconds, 1e-9), **state.throughput,
            "this_run_seconds": round(time.time() - t0, 1),
            "parameters": count_parameters(generator),
            "discriminator_parameters": count_parameters(discriminator),
            "train_images": len(train_set), "train_patients": len(set(train_set.patients)),
            "output_dir": str(output_dir), "class_names": list(CLASS_NAMES),
            "labels_in_training": np.bincount(train_set.labels.numpy(), minlength=2).tolist(),
        }
        save_pipeline(ema_pipeline(), output_dir, model_card(cfg, data_root, metrics))
        write_json(output_dir / "metrics.json", metrics)
        accelerator.print(f"saved pipeline to {output_dir} ({state.step} steps)")
    accelerator.end_training()
    return metrics
