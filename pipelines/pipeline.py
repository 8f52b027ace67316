"""The generators as diffusers pipelines: the class-conditioned latent diffusion model (VAE + UNet
+ scheduler) and the StyleGAN2 baseline, each saved and loaded as a normal diffusers folder.

>>> from pipelines import ADNIDiffusionPipeline
>>> pipe = ADNIDiffusionPipeline.from_pretrained("outputs/demo/model")
>>> images = pipe(["AD", "NC"], num_images_per_label=4, generator=torch.manual_seed(0)).images
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import stylegan2  # noqa: F401  diffusers loads a saved generator only from an imported module
from .data import CLASS_NAMES, NATIVE_SIZE, to_native, to_pixels
from .errors import UserError
from .models import label_inputs

SCHEDULERS = {
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "euler": (EulerDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {"clip_sample": False}),
}


def make_scheduler(name: str, config):
    """Any supported scheduler from a training scheduler's config, with clipping off (latents)."""
    if name not in SCHEDULERS:
        raise UserError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return cls.from_config(config, **extra)


class SlicePipeline(DiffusionPipeline):
    """What every generator of labelled slices shares: label names <-> ids, the native crop."""

    @property
    def resolution(self) -> int:
        """Side of the square images the model makes (before the crop to the native size)."""
        raise NotImplementedError

    def label_ids(self, labels) -> list[int]:
        names = [n.upper() for n in self.config.class_names]
        ids = []
        for label in labels:
            if isinstance(label, str) and label.upper() in names:
                ids.append(names.index(label.upper()))
            elif isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
                ids.append(int(label))
            else:
                raise UserError(f"unknown label {label!r}; this model knows "
                                f"{', '.join(self.config.class_names)} (ids 0..{len(names) - 1})")
        return ids

    def repeated_ids(self, labels, num_images_per_label: int) -> list[int]:
        """Label ids for a call: one label or a list, each repeated ``num_images_per_label``."""
        if isinstance(labels, (str, int)):
            labels = [labels]
        return [i for i in self.label_ids(labels) for _ in range(num_images_per_label)]

    def to_native(self, images: torch.Tensor) -> np.ndarray:
        """(N, 1, R, R) float in [-1, 1] -> (N, H, W) uint8 at the native slice size."""
        pixels = to_pixels(images.squeeze(1)).numpy()
        size = tuple(self.config.native_size)
        return np.stack([to_native(p, size) for p in pixels])

    def format_output(self, images: torch.Tensor, output_type: str):
        """Square float images -> "square" as is, "np" native uint8, "pil" native PIL images."""
        if output_type == "square":
            return images
        if output_type not in ("np", "pil"):
            raise UserError(f"unknown output_type {output_type!r}; use pil, np or square")
        images = self.to_native(images)
        return [Image.fromarray(img, mode="L") for img in images] if output_type == "pil" \
            else images


class ADNIDiffusionPipeline(SlicePipeline):
    """Generate AD / NC brain slices with classifier-free guidance.

    Args:
        vae: the greyscale AutoencoderKL (its config's ``scaling_factor`` scales the latents).
        unet: a UNet2DModel with ``num_class_embeds = len(class_names) + 1`` (last id = null),
            or a UNet2DConditionModel taking the one-hot id as its one context token
            (``models.build_unet``).
        scheduler: any diffusers scheduler (DPM-Solver++ by default).
        class_names: label names in id order; saved in model_index.json so ids travel with it.
        native_size: (width, height) the square output is cropped back to.
    """

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, vae, unet, scheduler, class_names=CLASS_NAMES, native_size=NATIVE_SIZE):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=list(class_names), native_size=list(native_size))

    @property
    def null_label(self) -> int:
        return len(self.config.class_names)

    @property
    def resolution(self) -> int:
        return int(self.vae.config.sample_size)

    @torch.no_grad()
    def __call__(
        self,
        labels,
        num_images_per_label: int = 1,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 20,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample ``num_images_per_label`` slices for each label.

        Args:
            labels: names ("AD", "NC") or ids, or one of them.
            guidance_scale: 1 = conditional model alone; > 1 pushes away from the unconditional.
            generator: one generator, or one per image (results then do not depend on batching).
            output_type: "pil" (native-size greyscale PIL images), "np" ((N, H, W) uint8 at the
                native size), "square" ((N, 1, R, R) float in [-1, 1]) or "latent".

        Returns:
            ImagePipelineOutput with ``images`` (the latents for "latent").
        """
        if num_images_per_label < 1 or num_inference_steps < 1:
            raise UserError("num_images_per_label and num_inference_steps must be >= 1")
        if guidance_scale < 1:
            raise UserError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
        ids = self.repeated_ids(labels, num_images_per_label)
        class_labels = torch.tensor(ids, device=self.device)
        unet_cfg = self.unet.config
        shape = (len(ids), unet_cfg.in_channels, unet_cfg.sample_size, unet_cfg.sample_size)
        latents = randn_tensor(shape, generator=generator, device=self.device,
                               dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        guided = guidance_scale > 1
        if guided:  # one batched UNet call: [unconditional, conditional]
            class_labels = torch.cat([torch.full_like(class_labels, self.null_label),
                                      class_labels])
        conditioning = label_inputs(self.unet, class_labels)  # built once, not per step
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            out = self.unet(model_input, t, **conditioning).sample
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(out, t, latents, generator=generator).prev_sample
        images = latents if output_type == "latent" else \
            self.format_output(self.decode_latents(latents), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def decode_latents(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents -> (N, 1, R, R) float images in [-1, 1]."""
        scale = self.vae.config.scaling_factor
        outs = [self.vae.decode(chunk.to(self.vae.dtype) / scale).sample.float().clamp(-1, 1)
                for chunk in latents.split(batch_size)]
        return torch.cat(outs).cpu()


class StyleGAN2Pipeline(SlicePipeline):
    """Generate AD / NC brain slices with the label-conditioned StyleGAN2 baseline.

    Args:
        generator: a :class:`pipelines.stylegan2.StyleGAN2Generator` (EMA weights).
        class_names, native_size: as for :class:`ADNIDiffusionPipeline`.
    """

    def __init__(self, generator, class_names=CLASS_NAMES, native_size=NATIVE_SIZE):
        super().__init__()
        self.register_modules(generator=generator)
        self.register_to_config(class_names=list(class_names), native_size=list(native_size))

    @property
    def resolution(self) -> int:
        return int(self.generator.config.resolution)

    @torch.no_grad()
    def __call__(self, labels, num_images_per_label: int = 1, truncation_psi: float = 1.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", return_dict: bool = True, guidance_scale=None,
                 num_inference_steps=None):
        """Sample ``num_images_per_label`` slices for each label in one generator pass.

        ``truncation_psi`` < 1 pulls each style towards its label's mean w. ``guidance_scale``
        and ``num_inference_steps`` belong to diffusion models: accepted so one sampling loop
        drives both kinds of pipeline, and ignored (a GAN has neither).
        """
        if num_images_per_label < 1:
            raise UserError("num_images_per_label must be >= 1")
        ids = self.repeated_ids(labels, num_images_per_label)
        gen_model = self.generator
        z = randn_tensor((len(ids), gen_model.config.z_dim), generator=generator,
                         device=self.device, dtype=gen_model.dtype)
        images = gen_model(z, torch.tensor(ids, device=self.device), truncation_psi,
                           noise_generator=generator).float().clamp(-1, 1).cpu()
        images = self.format_output(images, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


PIPELINES = {cls.__name__: cls for cls in (ADNIDiffusionPipeline, StyleGAN2Pipeline)}


def save_pipeline(pipe: DiffusionPipeline, output_dir: str | Path, card: str) -> None:
    """save_pretrained into a temporary folder, then swap each component in (model index last).

    A kill at any moment leaves each component folder either the old or the new one complete.
    """
    output_dir = Path(output_dir)
    tmp = output_dir / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "README.md").write_text(card)
    for name in pipe.components:
        if (output_dir / name).exists():
            shutil.rmtree(output_dir / name)
        os.replace(tmp / name, output_dir / name)
    os.replace(tmp / "README.md", output_dir / "README.md")
    os.replace(tmp / "model_index.json", output_dir / "model_index.json")
    shutil.rmtree(tmp, ignore_errors=True)
