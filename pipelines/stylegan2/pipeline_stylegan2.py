"""StyleGAN2Pipeline: the label-conditioned StyleGAN2 baseline as a diffusers pipeline.

Portable, like ``pipeline_adni.py``: a saved folder carries this file, ``slices.py`` and the
generator's own code (``generator/stylegan2_networks.py``), and loads in plain diffusers with
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..slices import CLASS_NAMES, NATIVE_SIZE, SlicePipeline


class StyleGAN2Pipeline(SlicePipeline):
    """Generate AD / NC brain slices with the label-conditioned StyleGAN2 baseline.

    Args:
        generator: a ``StyleGAN2Generator`` (EMA weights).
        class_names, native_size: as for ``ADNIDiffusionPipeline``.
    """

    def __init__(self, generator, class_names=CLASS_NAMES, native_size=NATIVE_SIZE):
        super().__init__()
        self.register_modules(generator=generator)
        self.register_to_config(class_names=list(class_names), native_size=list(native_size))

    @property
    def resolution(self) -> int:
        return int(self.generator.config.resolution)

    def sampling_settings(self) -> dict:
        """A GAN has no sampler, steps or guidance: one pass per image."""
        return {}

    @torch.no_grad()
    def __call__(self, class_labels, num_images_per_label: int = 1, truncation_psi: float = 1.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", native_size: bool = True, return_dict: bool = True,
                 guidance_scale=None, num_inference_steps=None):
        """Sample ``num_images_per_label`` slices for each label in one generator pass.

        ``truncation_psi`` < 1 pulls each style towards its label's mean w. ``guidance_scale``
        and ``num_inference_steps`` belong to diffusion models and are refused (ValueError)
        rather than silently ignored.
        """
        for name, value in (("guidance_scale", guidance_scale),
                            ("num_inference_steps", num_inference_steps)):
            if value is not None:
                raise ValueError(f"{name} does not apply to a StyleGAN2 model (one generator "
                                 "pass per image, no guidance); leave it out")
        self.check_output_type(output_type)
        if not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise ValueError(f"num_images_per_label must be an integer >= 1, "
                             f"got {num_images_per_label!r}")
        ids = [i for i in self.label_ids(class_labels) for _ in range(num_images_per_label)]
        device = self._execution_device
        gen_model = self.generator
        z = randn_tensor((len(ids), gen_model.config.z_dim), generator=generator, device=device,
                         dtype=gen_model.dtype)
        images = gen_model(z, torch.tensor(ids, device=device), truncation_psi,
                           noise_generator=generator).float().clamp(-1, 1).cpu()
        images = self.postprocess(images, output_type, native_size)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
