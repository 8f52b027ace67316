"""The VAE's objective: L1 + SSIM reconstruction, KL, and an optional patch-GAN term."""

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
