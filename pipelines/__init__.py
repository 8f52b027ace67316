"""ADNI AD/NC class-conditioned latent diffusion: data, models, training loop, pipeline, metrics.

Heavy modules load on first use, so `python -m pipelines.data inspect` starts fast.
"""

from .data import CLASS_NAMES, LABEL_IDS, NULL_LABEL

_LAZY = {
    "ADNIDiffusionPipeline": "pipeline",
    "load_config": "config",
    "Config": "config",
    "load_split": "data",
    "train_vae": "autoencoder",
    "train_unet": "diffusion",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["CLASS_NAMES", "LABEL_IDS", "NULL_LABEL", *_LAZY]
