"""The StyleGAN2 baseline: networks, objective, trainer, pipeline."""
