"""The StyleGAN2 objective: non-saturating loss, lazy R1 and path-length regularisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .networks import diff_augment


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
