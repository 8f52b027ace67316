"""ADNI AD/NC class-conditioned latent diffusion (and its StyleGAN2 baseline).

One subpackage per model, each holding its network, objective, trainer and pipeline:
``vae`` (the greyscale AutoencoderKL), ``ldm`` (the class-conditioned UNet on its latents) and
``stylegan2`` (the baseline). Shared pieces are written once: ``config``, ``data``, ``slices``
(labels, pixel ranges, the native crop), ``training`` (the one loop), ``files`` (atomic writes),
``hub`` (portable model folders), ``sampling``, ``metrics``, ``judge``, ``evaluation``,
``embedding``, ``plots``, ``counterfactual`` (edits of real slices) and ``counterfactual_eval``
(those edits against the stand-in set's paired truth).

Names load on first use: `python -m pipelines.data` then runs its module only once.
"""

import os

# Nothing here may reach a hub: set before any module imports huggingface_hub or datasets,
# which read these once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

_LAZY = {
    "CLASS_NAMES": "slices",
    "NULL_LABEL": "slices",
    "parse_label": "slices",
    "ADNIDiffusionPipeline": "ldm.pipeline_adni",
    "ADNICounterfactualPipeline": "ldm.pipeline_adni",
    "StyleGAN2Pipeline": "stylegan2.pipeline_stylegan2",
    "load_pipeline": "sampling",
    "load_config": "config",
    "Config": "config",
    "load_split": "data",
    "train_vae": "vae.trainer",
    "train_unet": "ldm.trainer",
    "train_stylegan2": "stylegan2.trainer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = list(_LAZY)
