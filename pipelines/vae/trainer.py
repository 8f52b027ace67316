"""Stage 1: train (or fine-tune) the greyscale AutoencoderKL and measure it.

Writes OUTPUT_DIR/vae (save_pretrained, safetensors, with the measured ``scaling_factor``),
OUTPUT_DIR/metrics.json (held-out-patient PSNR/SSIM[/MS-SSIM], scale factor, steps, wall time),
OUTPUT_DIR/samples/recon-N.png grids and TensorBoard logs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure as ms_ssim,
)
from torchmetrics.functional.image import peak_signal_noise_ratio as psnr
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from ..config import Config, validate
from ..data import CLASS_NAMES, load_train_val, random_crop, spread_indices, training_images
from ..errors import UserError
from ..files import save_pretrained_atomic, write_json
from ..plots import save_grid, to_uint8
from ..runs import claim_run_dir
from ..training import (
    EMAWeights,
    TrainingDiverged,
    count_parameters,
    log_image,
    make_accelerator,
    prepare_run,
    run_training,
    scale_for_processes,
    scaling_note,
)
from .model import PatchDiscriminator, adapt_to_greyscale, build_vae, load_vae
from .objective import VAETrainingModel


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Posterior-mean reconstructions of float images in [-1, 1]."""
    outs = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(vae.device, vae.dtype)
        outs.append(vae.decode(vae.encode(chunk).latent_dist.mode()).sample.float().cpu())
    return torch.cat(outs).clamp(-1, 1)


@torch.no_grad()
def reconstruction_metrics(vae, images: torch.Tensor) -> dict:
    """PSNR/SSIM (and MS-SSIM from 161 px) on [0, 1]-scaled images."""
    recon = (reconstruct(vae, images) + 1) / 2
    target = (images.float() + 1) / 2
    out = {"psnr": float(psnr(recon, target, data_range=1.0)),
           "ssim": float(ssim(recon, target, data_range=1.0))}
    if images.shape[-1] >= 161:  # MS-SSIM's 5 scales need at least this size
        out["ms_ssim"] = float(ms_ssim(recon, target, data_range=1.0))
    return out


@torch.no_grad()
def measure_scaling_factor(vae, images: torch.Tensor, accelerator) -> float:
    """1 / std of posterior samples over ``images``, pooled across processes."""
    stats = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(64):
        z = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.sample().double().cpu()
        stats += torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64), z.sum(),
                              (z**2).sum()])
    stats = accelerator.reduce(stats.to(accelerator.device), reduction="sum").cpu()
    n, s, ss = stats.tolist()
    std = max((ss / n - (s / n) ** 2), 1e-12) ** 0.5
    return 1.0 / std


def _prepare_vae(cfg: Config, pretrained: str | None):
    if pretrained is None:
        return build_vae(cfg.vae, cfg.data.resolution), None
    vae = adapt_to_greyscale(load_vae(pretrained))
    return vae, str(pretrained)


def train_vae(cfg: Config, data_root: str | Path, output_dir: str | Path,
              pretrained: str | None = None, resume: str | None = None,
              overwrite: bool = False) -> dict:
    """Train the VAE with the shared loop; return the metrics written to metrics.json."""
    validate(cfg)
    output_dir = claim_run_dir(output_dir, "vae", resume, overwrite,
                               reads=tuple(p for p in (data_root, pretrained) if p), config=cfg)
    accelerator = make_accelerator(cfg.vae, output_dir, find_unused_parameters=True)
    vcfg = scale_for_processes(cfg.vae, accelerator.num_processes)
    if note := scaling_note(cfg.vae, vcfg):
        accelerator.print(note)
    train_set, val_set = load_train_val(data_root, cfg.data,
                                        progress=accelerator.is_local_main_process,
                                        num_workers=vcfg.num_workers)
    accelerator.print(f"train: {train_set.summary()}\nval (held-out patients): "
                      f"{val_set.summary()}")
    if len(val_set) == 0:
        raise UserError("no validation patients: raise --val_patients_fraction or add patients")
    vae, pretrained = _prepare_vae(cfg, pretrained)
    if vcfg.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    disc = PatchDiscriminator(vcfg.disc_channels) if vcfg.disc_weight > 0 else None
    model = VAETrainingModel(vae, disc, vcfg)
    groups = [{"params": vae.parameters(), "lr": vcfg.learning_rate}]
    if disc is not None:
        groups.append({"params": disc.parameters(), "lr": vcfg.disc_learning_rate})
    model, optimizer, lr_scheduler = prepare_run(accelerator, model, groups, vcfg, cfg,
                                                 output_dir, "vae")
    accelerator.print(f"VAE: {count_parameters(vae) / 1e6:.2f}M parameters, "
                      f"{accelerator.num_processes} process(es), {accelerator.mixed_precision}")
    ema = None
    if vcfg.ema_decay > 0:
        ema = EMAWeights(vae, vcfg.ema_decay, vcfg.ema_warmup, select=lambda m: m.vae)

    def current_vae():
        """The VAE being measured and saved: the EMA weights when EMA is on."""
        trained = accelerator.unwrap_model(model)
        return ema.copy(trained) if ema is not None else trained.vae.eval()

    train_pixels = train_set.pixels
    val_images = val_set.subset(spread_indices(len(val_set), 8)).as_float()

    def get_batch(indices, generator):  # generator: this micro-step's, from run_training
        images = training_images(train_pixels, indices, cfg.data.flip, generator)
        if vcfg.train_crop:
            images = random_crop(images, vcfg.train_crop, generator)
        return images.to(accelerator.device)

    def loss_fn(m, batch, step):
        return m(batch, step)

    def on_validation(step):
        inner = current_vae()
        recon = reconstruct(inner, val_images)
        pair = np.concatenate([to_uint8(val_images), to_uint8(recon)])
        path = save_grid(pair, output_dir / "samples" / f"recon-{step:06d}.png",
                         nrow=len(val_images))
        log_image(accelerator, "reconstructions", np.asarray(Image.open(path)), step)
        accelerator.log(reconstruction_metrics(inner, val_images), step=step)

    t0 = time.time()
    state = run_training(accelerator=accelerator, model=model, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, loss_fn=loss_fn, get_batch=get_batch,
                         num_examples=len(train_set), cfg=vcfg, output_dir=output_dir,
                         resume=resume, ema=ema, on_validation=on_validation, desc="vae")
    vae = current_vae()
    sub = spread_indices(len(train_set), vcfg.scale_factor_images)
    shard = sub[accelerator.process_index::accelerator.num_processes]
    scale = measure_scaling_factor(vae, train_set.subset(shard).as_float(), accelerator)
    metrics = {}
    if accelerator.is_main_process:
        held_out = reconstruction_metrics(vae, val_set.as_float())
        bad = {k: v for k, v in {**held_out, "scaling_factor": scale}.items()
               if not math.isfinite(v)}
        if bad:  # a diverged VAE: nothing is saved over the last good checkpoint
            raise TrainingDiverged(
                f"the trained VAE gives non-finite {', '.join(f'{k} {v}' for k, v in bad.items())}"
                f" after {state.step} steps; nothing was saved. Lower --learning_rate and train "
                "again (--overwrite), or resume from an earlier checkpoint")
        vae.register_to_config(scaling_factor=scale)
        save_pretrained_atomic(vae, output_dir / "vae")
        metrics = {
            **held_out, "scaling_factor": scale, "steps": state.step,
            "wall_seconds": round(state.wall_seconds, 1),
            "this_run_seconds": round(time.time() - t0, 1),
            "images_seen": state.images_seen, **state.throughput,
            "resolution": cfg.data.resolution,
            "parameters": count_parameters(vae), "val_images": len(val_set),
            "val_patients": len(set(val_set.patients)), "class_names": list(CLASS_NAMES),
            "pretrained": pretrained, "skipped_files": len(train_set.skipped),
            "converted_files": len(train_set.converted),
            "corrupt_files_skipped": len(train_set.corrupt),
        }
        write_json(output_dir / "metrics.json", metrics)
        accelerator.print(f"held-out PSNR {held_out['psnr']:.2f} dB, SSIM {held_out['ssim']:.4f}"
                          f", scaling_factor {scale:.4f} -> {output_dir / 'vae'}")
    accelerator.end_training()
    return metrics

