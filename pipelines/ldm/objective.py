"""The latent diffusion objective: min-SNR weighted epsilon / v loss, the training noise schedule,
and label dropout for classifier-free guidance.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from ..slices import NULL_LABEL
from .pipeline_adni import condition_inputs


def training_scheduler(ucfg) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=ucfg.num_train_timesteps,
                         beta_schedule=ucfg.beta_schedule, beta_start=ucfg.beta_start,
                         beta_end=ucfg.beta_end, prediction_type=ucfg.prediction_type,
                         clip_sample=False)


def drop_labels(class_labels: torch.Tensor, prob: float, generator=None) -> torch.Tensor:
    """Replace labels by the null label with probability ``prob`` (classifier-free guidance)."""
    drop = torch.rand(class_labels.shape, generator=generator) < prob
    return torch.where(drop, torch.full_like(class_labels, NULL_LABEL), class_labels)


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): min(snr, gamma)/snr for eps, /(snr+1) for v."""
    if gamma <= 0:
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, class_labels: torch.Tensor,
                   snr_gamma: float, generator: torch.Generator | None = None,
                   slice_positions: torch.Tensor | None = None,
                   neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted MSE of the UNet's epsilon or v prediction at a random timestep
    (``slice_positions``: the levels, for a level-conditioned UNet; ``neighbours``: a
    stack-conditioned UNet's extra input channels, beside the noisy latents)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else \
        noise_scheduler.get_velocity(latents, noise, timesteps)
    model_input = noisy if neighbours is None else torch.cat([noisy, neighbours], dim=1)
    pred = unet(model_input, timesteps,
                **condition_inputs(unet, class_labels, slice_positions)).sample
    mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    alphas = noise_scheduler.alphas_cumprod.to(latents.device)[timesteps]
    snr = alphas / (1 - alphas)
    return mse * min_snr_weight(snr, snr_gamma, prediction_type)
