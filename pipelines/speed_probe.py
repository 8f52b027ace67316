"""How long the time-capped training stages will take on this host, measured before they start.

:func:`time_training_steps` times a few real optimizer steps of the VAE or the UNet, built from
the config at its batch size and precision, on random inputs of the training shapes;
:func:`project` turns seconds per step into each stage's time for its step budget, the step its
``max_train_minutes`` cap would stop it at, and a warning when the budget does not fit the cap.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from .training import resolve_precision

STAGES = ("vae", "unet")
# A stage's time outside its training loop (start-up, reading the data, the UNet's latent cache,
# the final measurement and save) in the stage's own steps: the demo data on a throttled 2-core
# host took 166 s beside VAE steps of 1.13 s, 132 s beside UNet steps of 1.63 s.
FIXED_STEPS = {"vae": 147, "unet": 81}


def _vae_step(cfg):
    from .vae.model import PatchDiscriminator, build_vae
    from .vae.objective import VAETrainingModel

    vcfg = cfg.vae
    disc = PatchDiscriminator(vcfg.disc_channels) if vcfg.disc_weight > 0 else None
    model = VAETrainingModel(build_vae(vcfg, cfg.data.resolution), disc, vcfg)
    size = vcfg.train_crop or cfg.data.resolution
    images = torch.rand(vcfg.train_batch_size, 1, size, size) * 2 - 1
    # past the discriminator's start, so a GAN term is timed when the config has one
    return model, vcfg, lambda: model(images, vcfg.disc_start_step)[0]


def _unet_step(cfg):
    from .ldm.objective import diffusion_loss, training_scheduler
    from .ldm.unet import build_unet

    ucfg = cfg.unet
    factor = 2 ** (len(cfg.vae.block_out_channels) - 1)
    size = cfg.data.resolution // factor
    model = build_unet(ucfg, cfg.vae.latent_channels, size)
    scheduler = training_scheduler(ucfg)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(ucfg.train_batch_size, cfg.vae.latent_channels, size, size)
    labels = torch.randint(0, 3, (ucfg.train_batch_size,), generator=gen)
    positions = torch.rand(ucfg.train_batch_size, generator=gen) \
        if getattr(ucfg, "level_conditioning", False) else None
    return model, ucfg, lambda: diffusion_loss(model, scheduler, latents, labels, ucfg.snr_gamma,
                                               gen, slice_positions=positions).mean()


def time_training_steps(cfg, stage: str, seconds: float = 12.0, max_steps: int = 40,
                        warmup: int = 2) -> float:
    """Seconds per optimizer step (forward, backward, fused AdamW) of ``stage`` ("vae" or
    "unet") as ``cfg`` trains it on this host's CPU: the mean over the steps after ``warmup``
    that fit ``seconds`` (at least 2, at most ``max_steps``)."""
    model, scfg, loss_of = {"vae": _vae_step, "unet": _unet_step}[stage](cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=scfg.learning_rate, fused=True)
    bf16 = resolve_precision(scfg.mixed_precision) == "bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    t0, done = time.perf_counter(), 0
    while done < max_steps and (done < 2 or time.perf_counter() - t0 < seconds):
        step()
        done += 1
    return (time.perf_counter() - t0) / done


@dataclass
class StageProjection:
    stage: str
    steps: int  # the step budget (max_train_steps)
    cap_minutes: float  # max_train_minutes; 0 = none
    seconds_per_step: float
    full_seconds: float  # the whole budget, overhead included
    seconds: float  # what the stage will take: the full budget or the cap
    steps_reached: int  # where it stops: the budget, or the step the cap cuts it at

    @property
    def cut(self) -> bool:
        return self.steps_reached < self.steps


def project(cfg, seconds_per_step: dict[str, float], caps: bool = True) -> list[StageProjection]:
    """Each measured stage's time for its budget; ``caps=False``: the caps lifted."""
    out = []
    for stage, per_step in seconds_per_step.items():
        scfg = getattr(cfg, stage)
        cap = scfg.max_train_minutes * 60 if caps else 0.0
        steps_time = scfg.max_train_steps * per_step
        fixed = FIXED_STEPS[stage] * per_step
        full = steps_time + fixed
        if cap > 0 and steps_time > cap:  # the loop stops at the first step past the cap
            reached = min(scfg.max_train_steps, math.ceil(cap / per_step))
            seconds = reached * per_step + fixed
        else:
            reached, seconds = scfg.max_train_steps, full
        out.append(StageProjection(stage, scfg.max_train_steps,
                                   scfg.max_train_minutes if caps else 0.0, per_step, full,
                                   seconds, reached))
    return out


def probe(cfg, caps: bool = True, seconds: float = 12.0) -> list[StageProjection]:
    """Time each stage on this host (``seconds`` of steps each, after two warm-up steps) and
    project."""
    return project(cfg, {stage: time_training_steps(cfg, stage, seconds) for stage in STAGES},
                   caps)


# The demo's stages after training (sampling, embedding, evaluation, edits) in the UNet stage's
# steps: ~2,900 on a bf16 host, ~1,800 on an AVX2-only one (the demo's timings.json): rough,
# within a third.
REST_UNET_STEPS = 2400


def rest_seconds(projections: list[StageProjection]) -> float:
    """The demo's stages after training, roughly (``REST_UNET_STEPS``), at the UNet's speed."""
    unet = next(p for p in projections if p.stage == "unet")
    return REST_UNET_STEPS * unet.seconds_per_step


NAMES = {"vae": "VAE", "unet": "UNet"}


def summary_lines(projections: list[StageProjection]) -> list[str]:
    """One line per stage: its speed here and its projected time."""
    lines = []
    for p in projections:
        cap = f", cap {p.cap_minutes:g} min" if p.cap_minutes > 0 else ", no cap"
        where = (f"the cap stops it near step {p.steps_reached}" if p.cut else
                 "all steps")
        lines.append(f"{NAMES[p.stage]}: {p.seconds_per_step * 1000:.0f} ms/step; "
                     f"{p.steps} steps need ~{p.full_seconds / 60:.1f} min{cap}: "
                     f"~{p.seconds / 60:.1f} min, {where}")
    return lines


def warning_lines(projections: list[StageProjection], lift_flag: str,
                  smaller: str) -> list[str]:
    """Empty when every budget fits its cap; else what will happen and what to do."""
    cut = [p for p in projections if p.cut]
    if not cut:
        return []
    extra = sum(p.full_seconds - p.seconds for p in cut)
    lines = ["WARNING: this host is too slow for the config's step budgets within its time caps:"]
    lines += [f"  the {NAMES[p.stage]} would stop at step ~{p.steps_reached} of {p.steps} "
              f"(its {p.steps} steps need ~{p.full_seconds / 60:.1f} min, the cap is "
              f"{p.cap_minutes:g} min)" for p in cut]
    lines += ["  a model trained short misses targets the full budget meets. To train every step,",
              f"  rerun with {lift_flag} (~{extra / 60:.0f} min longer); or use {smaller}."]
    return lines


def as_record(projections: list[StageProjection]) -> list[dict]:
    return [{**asdict(p), "cut": p.cut} for p in projections]
