"""Objectives. Each returns per-sample or scalar terms and can be tested on its own."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from .models import label_inputs
from .stylegan2 import diff_augment


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


class StyleGAN2TrainingModel(nn.Module):
    """Generator + discriminator + their regularisers as one module (one optimizer, one DDP).

    Non-saturating logistic loss; R1 on reals and path-length regularisation, both lazy (every
    ``*_interval`` steps, scaled by it); style mixing; DiffAugment on everything D sees. As in
    :class:`VAETrainingModel`, the generator's term sees the discriminator through detached
    weights and the discriminator's term sees detached fakes, so one backward pass gives each
    network only its own gradient (a simultaneous update rather than ada's alternating phases).
    """

    def __init__(self, generator, discriminator, cfg):
        super().__init__()
        self.generator, self.discriminator, self.cfg = generator, discriminator, cfg
        self.register_buffer("pl_mean", torch.zeros([]))

    def styles(self, labels: torch.Tensor) -> torch.Tensor:
        """Random styles for ``labels``; with some probability two z mixed at a random layer."""
        gen, cfg = self.generator, self.cfg
        n = len(labels)
        z = torch.randn(n, gen.config.z_dim, device=labels.device)
        ws = gen.map(z, labels, update_w_avg=1 - cfg.w_avg_beta)
        if cfg.style_mixing_prob > 0:
            other = gen.map(torch.randn_like(z), labels)
            cutoff = torch.randint(1, gen.num_ws, (n, 1), device=labels.device)
            cutoff = torch.where(torch.rand(n, 1, device=labels.device) < cfg.style_mixing_prob,
                                 cutoff, gen.num_ws)
            later = torch.arange(gen.num_ws, device=labels.device)[None] >= cutoff
            ws = torch.where(later[:, :, None], other, ws)
        return ws

    def forward(self, batch, step: int) -> tuple[torch.Tensor, dict]:
        real, labels = batch
        cfg, disc = self.cfg, self.discriminator

        def augment(x):
            return diff_augment(x, cfg.augment)

        fake = self.generator.synthesis(self.styles(labels))
        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        g_loss = F.softplus(-functional_call(disc, frozen, (augment(fake), labels))).mean()
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        real = real.detach().requires_grad_(do_r1)
        real_logits = disc(augment(real), labels)
        d_loss = F.softplus(disc(augment(fake.detach()), labels)).mean() + \
            F.softplus(-real_logits).mean()
        loss = g_loss + d_loss
        logs = {"g_loss": g_loss, "d_loss": d_loss, "real_score": real_logits.mean()}
        if do_r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            loss = loss + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            logs["r1"] = r1
        if cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
            penalty = self.path_length_penalty(labels[: max(1, len(labels) //
                                                            cfg.pl_batch_shrink)])
            loss = loss + penalty * cfg.pl_weight * cfg.pl_interval
            logs["pl_penalty"] = penalty
        return loss, {k: v.detach() for k, v in logs.items()}

    def path_length_penalty(self, labels: torch.Tensor) -> torch.Tensor:
        """(|J_w^T y| - a)^2 with a the running mean length (StyleGAN2 sec. 3.2)."""
        ws = self.styles(labels)
        images = self.generator.synthesis(ws)
        noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean(), self.cfg.pl_decay))
        return (lengths - self.pl_mean).square().mean()


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
    pred = unet(noisy, timesteps, **label_inputs(unet, class_labels)).sample
    mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    alphas = noise_scheduler.alphas_cumprod.to(latents.device)[timesteps]
    snr = alphas / (1 - alphas)
    return mse * min_snr_weight(snr, snr_gamma, prediction_type)
