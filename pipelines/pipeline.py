"""The class-conditioned latent diffusion pipeline: VAE + UNet + scheduler, as a diffusers folder.

>>> from pipelines import ADNIDiffusionPipeline
>>> pipe = ADNIDiffusionPipeline.from_pretrained("outputs/demo/model")
>>> images = pipe(["AD", "NC"], num_images_per_label=4, generator=torch.manual_seed(0)).images
"""

from __future__ import annotations

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

from .data import CLASS_NAMES, NATIVE_SIZE, to_native, to_pixels
from .errors import UserError

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


class ADNIDiffusionPipeline(DiffusionPipeline):
    """Generate AD / NC brain slices with classifier-free guidance.

    Args:
        vae: the greyscale AutoencoderKL (its config's ``scaling_factor`` scales the latents).
        unet: a UNet2DModel with ``num_class_embeds = len(class_names) + 1`` (last id = null).
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
        if isinstance(labels, (str, int)):
            labels = [labels]
        if num_images_per_label < 1 or num_inference_steps < 1:
            raise UserError("num_images_per_label and num_inference_steps must be >= 1")
        if guidance_scale < 1:
            raise UserError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
        ids = [i for i in self.label_ids(labels) for _ in range(num_images_per_label)]
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
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            out = self.unet(model_input, t, class_labels=class_labels).sample
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(out, t, latents, generator=generator).prev_sample
        if output_type == "latent":
            images = latents
        else:
            images = self.decode_latents(latents)
            if output_type != "square":
                images = self.to_native(images)
                if output_type == "pil":
                    images = [Image.fromarray(img, mode="L") for img in images]
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def decode_latents(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents -> (N, 1, R, R) float images in [-1, 1]."""
        scale = self.vae.config.scaling_factor
        outs = [self.vae.decode(chunk.to(self.vae.dtype) / scale).sample.float().clamp(-1, 1)
                for chunk in latents.split(batch_size)]
        return torch.cat(outs).cpu()

    def to_native(self, images: torch.Tensor) -> np.ndarray:
        """(N, 1, R, R) float in [-1, 1] -> (N, H, W) uint8 at the native slice size."""
        pixels = to_pixels(images.squeeze(1)).numpy()
        size = tuple(self.config.native_size)
        return np.stack([to_native(p, size) for p in pixels])
