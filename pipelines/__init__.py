"""ADNI AD/NC class-conditioned latent diffusion (and its StyleGAN2 baseline): data, models,
training loop, pipelines, metrics.

Names load on first use: `python -m pipelines.data` then runs its module only once.
"""

_LAZY = {
    "CLASS_NAMES": "data",
    "LABEL_IDS": "data",
    "NULL_LABEL": "data",
    "ADNIDiffusionPipeline": "pipeline",
    "StyleGAN2Pipeline": "pipeline",
    "load_config": "config",
    "Config": "config",
    "load_split": "data",
    "train_vae": "autoencoder",
    "train_unet": "diffusion",
    "train_stylegan2": "gan",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = list(_LAZY)
