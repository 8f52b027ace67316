"""Objectives. Each returns per-sample or scalar terms and can be tested on its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchmetrics.functional.image import structural_similarity_index_measure as ssim


def reconstruction_terms(images: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1 and (1 - SSIM) between images in [-1, 1]; SSIM in fp32 (bf16 variance is too coarse)."""
    l1 = (recon.float() - images.float()).abs().mean()
    structural = 1 - ssim(recon.float(), images.float(), data_range=2.0, kernel_size=7)
    return {"l1": l1, "ssim_loss": structural}


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


class VAETrainingModel(nn.Module):
    """VAE + patch discriminator as one module, so one optimizer (and DDP) trains both.

    The generator's adversarial term sees the discriminator through detached weights, and the
    discriminator's term sees detached reconstructions: one backward pass gives each side only
    its own gradient.
    """

    def __init__(self, vae, discriminator, cfg):
        super().__init__()
        self.vae, self.discriminator, self.cfg = vae, discriminator, cfg

    def forward(self, images: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        terms = reconstruction_terms(images, recon)
        kl = posterior.kl().mean()
        loss = terms["l1"] + cfg.ssim_weight * terms["ssim_loss"] + cfg.kl_weight * kl
        logs = {**terms, "kl": kl}
        if self.discriminator is not None and step >= cfg.disc_start_step:
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            g_adv = -functional_call(self.discriminator, frozen, (recon,)).mean()
            d_loss = hinge_discriminator_loss(self.discriminator(images),
                                              self.discriminator(recon.detach()))
            loss = loss + cfg.disc_weight * g_adv + d_loss
            logs |= {"g_adv": g_adv, "d_loss": d_loss}
        return loss, {k: v.detach() for k, v in logs.items()}


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): min(snr, gamma)/snr for eps, /(snr+1) for v."""
    if gamma <= 0:
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, class_labels: torch.Tensor,
                   snr_gamma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample weighted MSE of the UNet's epsilon or v prediction at a random timestep."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else \
        noise_scheduler.get_velocity(latents, noise, timesteps)
    pred = unet(noisy, timesteps, class_labels=class_labels).sample
    mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    alphas = noise_scheduler.alphas_cumprod.to(latents.device)[timesteps]
    snr = alphas / (1 - alphas)
    return mse * min_snr_weight(snr, snr_gamma, prediction_type)
