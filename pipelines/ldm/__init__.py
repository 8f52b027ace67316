"""Class-conditioned latent diffusion: UNet, objective, latent cache, trainer, pipeline."""
