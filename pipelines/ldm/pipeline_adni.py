"""ADNIDiffusionPipeline: class-conditioned latent diffusion of AD / NC brain slices, and
ADNICounterfactualPipeline: the same components editing real slices towards the other label.

Portable: imports only torch, numpy, Pillow, diffusers and ``slices`` (copied beside it), so a
saved model folder carries this file and loads in plain diffusers::

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("outputs/demo/model", trust_remote_code=True)
    images = pipe(["AD", "NC"], generator=torch.manual_seed(0)).images
    edit = sys.modules[type(pipe).__module__].ADNICounterfactualPipeline.from_pipe(pipe)
    counterfactuals = edit(images, "NC", "AD").images  # the measured defaults (EDIT_DEFAULTS)
    # a level-conditioned model: each slice at its level in the stack (0 lowest, 1 highest)
    images = pipe(["AD", "AD"], slice_positions=[0.1, 0.9], generator=torch.manual_seed(0)).images
    # a stack-conditioned model: synthetic subjects, each a stack of slices of one made-up brain
    stacks = pipe.subjects("AD", num_subjects=2, stack=20, generator=torch.manual_seed(0)).images
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    ImagePipelineOutput,
    SchedulerMixin,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils.torch_utils import randn_tensor

from ..slices import (
    CLASS_NAMES,
    NATIVE_SIZE,
    SlicePipeline,
    to_model_input,
    to_native,
    to_pixels,
    to_unit_range,
)

SCHEDULERS = {
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "sde-dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "euler": (EulerDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {"clip_sample": False}),
}


def make_scheduler(name: str, config):
    """Any supported sampler from a scheduler config (the training one's), clipping off."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return cls.from_config(config, **extra)


def scheduler_name(scheduler) -> str:
    """The SCHEDULERS key of a scheduler instance (its class, and the DPM algorithm)."""
    for name, (cls, extra) in SCHEDULERS.items():
        if type(scheduler) is cls and all(scheduler.config.get(k) == v for k, v in extra.items()
                                          if k == "algorithm_type"):
            return name
    return type(scheduler).__name__


# The level (0..1) is embedded like a diffusion timestep (0..1000): the same sinusoids, so
# neighbouring slices (1/20 apart) differ as much as timesteps 50 apart do.
POSITION_FEATURES = 64
POSITION_SCALE = 1000.0


def is_level_conditioned(unet) -> bool:
    """Whether ``unet`` (bare or wrapped by DDP) reads the slice level beside the label: the
    level through the "text_time" addition embedding (label in its own table), or a folder of
    the first format (a "projection" class embedding reading [one-hot label, level])."""
    config = getattr(unet, "module", unet).config
    return (getattr(config, "addition_embed_type", None) == "text_time"
            or getattr(config, "class_embed_type", None) == "projection")


def level_features(class_labels: torch.Tensor, slice_positions: torch.Tensor,
                   num_ids: int) -> torch.Tensor:
    """(N, num_ids + POSITION_FEATURES): [one-hot label id, sinusoidal level], what the
    first-format level-conditioned UNet's class-embedding MLP reads."""
    onehot = F.one_hot(class_labels, num_ids).float()
    waves = get_timestep_embedding(slice_positions.float() * POSITION_SCALE, POSITION_FEATURES,
                                   flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat([onehot, waves.to(onehot.device)], dim=1)


def condition_inputs(unet, class_labels: torch.Tensor,
                     slice_positions: torch.Tensor | None = None) -> dict:
    """The keyword arguments that give ``unet`` (bare or wrapped by DDP) the label ids, and the
    slice levels when it is level-conditioned.

    A level-conditioned UNet takes the label ids as ``class_labels`` (its embedding table) and
    the levels x POSITION_SCALE as ``time_ids``, which its ``add_time_proj`` turns into the
    timestep's sinusoids; ``text_embeds`` is the one-hot label, which its ``add_embedding`` MLP
    reads beside them (empty (N, 0) in a folder whose MLP reads the level alone). A
    first-format folder gets [one-hot label, level sinusoids]."""
    inner = getattr(unet, "module", unet)
    if is_level_conditioned(inner):
        if slice_positions is None:
            raise ValueError("this UNet is level-conditioned: give slice_positions")
        slice_positions = slice_positions.to(class_labels.device)
        if inner.config.class_embed_type == "projection":  # the first format
            num_ids = inner.config.projection_class_embeddings_input_dim - POSITION_FEATURES
            features = level_features(class_labels, slice_positions, num_ids)
            return {"encoder_hidden_states": None, "class_labels": features.to(inner.dtype)}
        time_ids = slice_positions.float()[:, None] * POSITION_SCALE
        text_dim = (inner.config.projection_class_embeddings_input_dim
                    - inner.config.addition_time_embed_dim)  # 0, or the one-hot label's ids
        text = (F.one_hot(class_labels, text_dim).float() if text_dim
                else time_ids.new_zeros(len(time_ids), 0))
        return {"encoder_hidden_states": None, "class_labels": class_labels,
                "added_cond_kwargs": {"text_embeds": text, "time_ids": time_ids}}
    if isinstance(inner, UNet2DConditionModel):
        tokens = F.one_hot(class_labels, inner.config.encoder_hid_dim)[:, None]
        return {"encoder_hidden_states": tokens.to(inner.dtype)}
    return {"class_labels": class_labels}


def is_stack_conditioned(unet) -> bool:
    """Whether ``unet`` also reads a neighbouring slice: 2C + 1 input channels for C output
    channels (its latent, the next-lower slice's latent, a "neighbour present" channel)."""
    config = getattr(unet, "module", unet).config
    return config.in_channels == 2 * config.out_channels + 1


def neighbour_channels(neighbours: torch.Tensor | None, like: torch.Tensor,
                       present: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C + 1, h, w), the extra input of a stack-conditioned UNet: the neighbours' latents
    where ``present`` (N,) is true (all when None), zero elsewhere, and ``present`` as a
    channel; ``neighbours`` None: no neighbour for any (zeros)."""
    n, c, h, w = like.shape
    if neighbours is None:
        return like.new_zeros(n, c + 1, h, w)
    mask = (torch.ones(n, device=like.device) if present is None else present.to(like.device))
    mask = mask.to(like.dtype)[:, None, None, None]
    return torch.cat([neighbours.to(like.dtype) * mask, mask.expand(n, 1, h, w)], dim=1)


def stack_levels(stack, stack_length) -> list[float]:
    """Levels of ``stack`` consecutive slices one training-stack step (1 / (stack_length - 1))
    apart, on the training levels, centred in [0, 1] (ValueError when they do not fit)."""
    if not stack_length or stack_length < 2:
        raise ValueError("this model does not record how many slices its training patients "
                         "had (train it with --unet.stack_conditioning true)")
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or \
            not 1 <= stack <= stack_length:
        raise ValueError(f"stack must be a whole number from 1 to {stack_length} (the slices "
                         f"per patient this model was trained on), got {stack!r}")
    step = 1 / (stack_length - 1)
    return [((stack_length - stack) // 2 + k) * step for k in range(stack)]


def check_positions(values) -> list[float]:
    """Slice levels as given to the pipeline -> a list of floats, each checked to be in [0, 1]."""
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    elif isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    elif isinstance(values, (int, float, np.number, str, bool)):
        values = [values]
    out = []
    for value in values:
        number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"slice_positions must be numbers in [0, 1] (0 = a patient's lowest "
                             f"slice, 1 = its highest), got {value!r}")
        out.append(float(value))
    if not out:
        raise ValueError("slice_positions is empty; give a number in [0, 1] or leave it out")
    return out


def guide(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + s (cond - uncond); s = 1: cond."""
    return uncond + guidance_scale * (cond - uncond)


def check_interval(interval) -> tuple[float, float] | None:
    """None (guidance at every step) or (low, high) noise levels, 0 <= low < high (ValueError)."""
    if interval is None:
        return None
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be None or two numbers (low, high), "
                         f"got {interval!r}") from None
    if (low, high) == (0, math.inf):
        return low, high  # every step
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise ValueError(f"guidance_interval must have 0 <= low < high, finite (or 0, inf: every "
                         f"step), got {interval!r}")
    return low, high


def interval_value(interval) -> list[float] | None:
    """The checked interval as saved in model_index.json: a list, or None for every step
    (also for (0, inf), so that no JSON file holds an infinity)."""
    checked = check_interval(interval)
    return None if checked is None or checked == (0, math.inf) else list(checked)


def noise_level(scheduler, t) -> float:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) of timestep ``t``: the noise-to-signal ratio."""
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def guided_steps(scheduler, timesteps, interval) -> list[bool]:
    """Which steps are guided: all, or those with low < sigma <= high (Kynkaanniemi et al. 2024:
    guidance at the noisiest steps only narrows the variety of the samples; the conditional
    model alone runs there, at half the cost)."""
    if interval is None:
        return [True] * len(timesteps)
    low, high = interval
    return [low < noise_level(scheduler, t) <= high for t in timesteps]


class ADNIDiffusionPipeline(SlicePipeline):
    """Generate AD / NC brain slices with classifier-free guidance.

    Args:
        vae: the greyscale AutoencoderKL (its config's ``scaling_factor`` scales the latents).
        unet: a UNet2DModel with ``num_class_embeds = len(class_names) + 1`` (last id = null),
            or a UNet2DConditionModel taking the one-hot id as its one context token, or a
            level-conditioned UNet2DConditionModel (``unet.build_unet``).
        scheduler: the sampler; the one saved with the model is the default everywhere.
        class_names: label names in id order; saved in model_index.json so ids travel with it.
        native_size: (width, height) the square output is cropped back to.
        guidance_scale, num_inference_steps: the call's defaults, saved with the model.
        guidance_interval: the call's default (low, high) noise levels sigma where guidance acts
            (None: every step), saved with the model.
        level_conditioned: recorded in model_index.json for readers; the UNet decides it (a
            UNet2DConditionModel with the "text_time" addition embedding reads the level, as
            does one of the first format, with ``class_embed_type="projection"``).
        stack_length: slices per training patient, for a stack-conditioned UNet (``subjects``);
            None in a model that makes single slices only.
    """

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, vae: AutoencoderKL, unet: UNet2DModel | UNet2DConditionModel,
                 scheduler: SchedulerMixin, class_names=CLASS_NAMES, native_size=NATIVE_SIZE,
                 guidance_scale: float = 2.0, num_inference_steps: int = 20,
                 level_conditioned: bool | None = None, guidance_interval=None,
                 stack_length: int | None = None):
        # typed: from_pipe hands over only components whose type matches
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=list(class_names), native_size=list(native_size),
                                guidance_scale=float(guidance_scale),
                                num_inference_steps=int(num_inference_steps),
                                level_conditioned=is_level_conditioned(unet),
                                guidance_interval=interval_value(guidance_interval),
                                stack_length=None if stack_length is None else int(stack_length))

    @property
    def null_label(self) -> int:
        return len(self.config.class_names)

    @property
    def resolution(self) -> int:
        """Side of the square images the model makes (before the crop to the native size)."""
        return int(self.vae.config.sample_size)

    @property
    def level_conditioned(self) -> bool:
        return is_level_conditioned(self.unet)

    @property
    def stack_conditioned(self) -> bool:
        return is_stack_conditioned(self.unet)

    def positions_for(self, slice_positions, num_labels: int, per_label: int,
                      generator=None) -> torch.Tensor:
        """One level per image: one number for all, one per label entry, or one per image;
        None draws each uniformly in [0, 1] from the image's own generator (after its noise)."""
        n = num_labels * per_label
        if slice_positions is None:
            if isinstance(generator, list):
                draws = [torch.rand(1, generator=g, device=g.device).cpu() for g in generator]
                return torch.cat(draws)
            return torch.rand(n, generator=generator,
                              device=generator.device if generator is not None else "cpu").cpu()
        values = check_positions(slice_positions)
        if len(values) == num_labels and per_label > 1:
            values = [v for v in values for _ in range(per_label)]
        elif len(values) == 1:
            values = values * n
        if len(values) != n:
            raise ValueError(f"slice_positions has {len(values)} entries; give one, one per "
                             f"label entry ({num_labels}) or one per image ({n})")
        return torch.tensor(values)

    def check_takes_levels(self, slice_positions) -> None:
        """ValueError when levels are given to a label-only model."""
        if slice_positions is not None and not self.level_conditioned:
            raise ValueError("this model is label-only (trained without slice levels); leave out "
                             "slice_positions, or train one with --unet.level_conditioning true")

    @property
    def saved_interval(self) -> list[float] | None:
        """The saved guidance interval (None in folders saved before it existed: every step)."""
        return interval_value(getattr(self.config, "guidance_interval", None))

    def sampling_settings(self) -> dict:
        """What a call does by default: the saved sampler, steps and guidance."""
        return {"scheduler": scheduler_name(self.scheduler),
                "num_inference_steps": int(self.config.num_inference_steps),
                "guidance_scale": float(self.config.guidance_scale),
                "guidance_interval": self.saved_interval}

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_images_per_label: int = 1,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        native_size: bool = True,
        return_dict: bool = True,
        slice_positions=None,
        guidance_interval="saved",
    ):
        """Sample ``num_images_per_label`` slices for each entry of ``class_labels``.

        Args:
            class_labels: names ("AD", "NC") or ids, or one of them.
            guidance_scale: 1 = conditional model alone; > 1 pushes away from the unconditional
                (default: the model's saved value).
            num_inference_steps: sampler steps (default: the model's saved value).
            generator: one generator, or one per image (each image then draws the same noise
                at any batch size; its numbers equal to float rounding, not bit for bit).
            output_type: "pil", "np" (float [0, 1], NHWC), "pt" (float [0, 1], NCHW) or
                "latent" (the scaled latents).
            native_size: crop to the native 256x240 slice (True) or keep the model's square.
            slice_positions: a level-conditioned model's level for the images in [0, 1] (0 = a
                patient's lowest slice, 1 = its highest): one number, one per entry of
                ``class_labels``, or one per image; None draws each image's level uniformly.
                Guidance acts on the label only; the level is given to both halves.
            guidance_interval: (low, high): guide only the steps whose noise level sigma lies in
                (low, high], the conditional model alone elsewhere; None guides every step
                (default: the model's saved value).

        Returns:
            ImagePipelineOutput with ``images``.
        """
        guidance_scale, num_inference_steps = self.check_settings(guidance_scale,
                                                                  num_inference_steps)
        interval = check_interval(self.saved_interval if guidance_interval == "saved"
                                  else guidance_interval)
        self.check_output_type(output_type, extra=("latent",))
        if not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise ValueError(f"num_images_per_label must be an integer >= 1, "
                             f"got {num_images_per_label!r}")
        self.check_takes_levels(slice_positions)
        label_ids = self.label_ids(class_labels)
        ids = [i for i in label_ids for _ in range(num_images_per_label)]
        device = self._execution_device
        labels = torch.tensor(ids, device=device)
        unet_cfg = self.unet.config
        shape = (len(ids), unet_cfg.out_channels, unet_cfg.sample_size, unet_cfg.sample_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        positions = None
        if self.level_conditioned:
            positions = self.positions_for(slice_positions, len(label_ids), num_images_per_label,
                                           generator).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        latents = self.denoise(latents, labels, guidance_scale, self.scheduler,
                               self.scheduler.timesteps, generator, positions, interval)
        images = latents if output_type == "latent" else \
            self.postprocess(self.decode_latents(latents), output_type, native_size)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def subjects(self, class_labels, num_subjects: int = 1, stack: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", native_size: bool = True,
                 guidance_scale: float | None = None, num_inference_steps: int | None = None,
                 guidance_interval="saved", return_dict: bool = True):
        """Synthetic subjects: ``num_subjects`` stacks per entry of ``class_labels``, each
        ``stack`` consecutive slices (default: the training patients' count) of one made-up
        brain, lowest first, at ``stack_levels``. The first slice has no neighbour; each next one
        is denoised reading the one below's latent (a stack-conditioned model only).

        ``generator``: one, or one per subject (each subject then independent of the batch).
        Other arguments as in ``__call__``. Returns ImagePipelineOutput whose ``images`` holds one
        entry per subject: its slices as ``output_type`` gives them ("latent": (S, K, C, h, w)).
        """
        if not self.stack_conditioned:
            raise ValueError("this model makes single slices only (trained without "
                             "unet.stack_conditioning); train one with --unet.stack_conditioning "
                             "true to make subjects")
        if not isinstance(num_subjects, int) or num_subjects < 1:
            raise ValueError(f"num_subjects must be an integer >= 1, got {num_subjects!r}")
        length = self.config.stack_length
        levels = stack_levels(length if stack is None else stack, length)
        guidance_scale, num_inference_steps = self.check_settings(guidance_scale,
                                                                  num_inference_steps)
        interval = check_interval(self.saved_interval if guidance_interval == "saved"
                                  else guidance_interval)
        self.check_output_type(output_type, extra=("latent",))
        device = self._execution_device
        ids = [i for i in self.label_ids(class_labels) for _ in range(num_subjects)]
        labels = torch.tensor(ids, device=device)
        cfg = self.unet.config
        shape = (len(ids), cfg.out_channels, cfg.sample_size, cfg.sample_size)
        below, stacks = None, []
        for level in levels:
            latents = randn_tensor(shape, generator=generator, device=device,
                                   dtype=self.unet.dtype)
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            below = self.denoise(latents * self.scheduler.init_noise_sigma, labels,
                                 guidance_scale, self.scheduler, self.scheduler.timesteps,
                                 generator, torch.full((len(ids),), level, device=device),
                                 interval, neighbour_channels(below, latents))
            stacks.append(below)
        latents = torch.stack(stacks, dim=1)
        images = latents if output_type == "latent" else [
            self.postprocess(self.decode_latents(one), output_type, native_size)
            for one in latents]
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def check_settings(self, guidance_scale, num_inference_steps) -> tuple[float, int]:
        """(guidance, steps): the model's saved values where None, checked (ValueError)."""
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        num_inference_steps = (self.config.num_inference_steps if num_inference_steps is None
                               else num_inference_steps)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, "
                             f"got {num_inference_steps!r}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 1):
            raise ValueError(f"guidance_scale must be a finite number >= 1 (1 = no guidance), "
                             f"got {guidance_scale}")
        return float(guidance_scale), num_inference_steps

    def denoise(self, latents: torch.Tensor, labels: torch.Tensor, guidance_scale: float,
                scheduler, timesteps, generator=None, positions: torch.Tensor | None = None,
                interval: tuple[float, float] | None = None,
                neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling loop: ``scheduler`` steps over ``timesteps``, each one batched UNet call
        on [unconditional, conditional] when guided (DDIMInverseScheduler runs it backwards).
        ``positions``: a level-conditioned model's slice levels, one per latent; ``interval``:
        the noise levels where guidance acts (``guided_steps``); ``neighbours``: a
        stack-conditioned model's extra channels (``neighbour_channels``; None: no neighbour)."""
        guided = guided_steps(scheduler, timesteps, interval) if guidance_scale > 1 else \
            [False] * len(timesteps)
        # built once, not per step
        conditional = condition_inputs(self.unet, labels, positions)
        both = None
        if any(guided):
            nulls = torch.cat([torch.full_like(labels, self.null_label), labels])
            both = condition_inputs(self.unet, nulls, None if positions is None
                                    else torch.cat([positions, positions]))
        extra = {} if isinstance(scheduler, DDIMInverseScheduler) else {"generator": generator}
        if self.stack_conditioned and neighbours is None:
            neighbours = neighbour_channels(None, latents)
        for t, guide_here in zip(self.progress_bar(timesteps), guided, strict=True):
            model_input = torch.cat([latents] * 2) if guide_here else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if neighbours is not None:  # read as given, not scaled like the noisy latent
                model_input = torch.cat([model_input, torch.cat([neighbours] * 2)
                                         if guide_here else neighbours], dim=1)
            out = self.unet(model_input, t, **(both if guide_here else conditional)).sample
            if guide_here:
                out = guide(*out.chunk(2), guidance_scale)
            latents = scheduler.step(out, t, latents, **extra).prev_sample
        return latents

    def decode_latents(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents -> (N, 1, R, R) float images in [-1, 1]."""
        scale = self.vae.config.scaling_factor
        outs = [self.vae.decode(chunk.to(self.vae.dtype) / scale).sample.float().clamp(-1, 1)
                for chunk in latents.split(batch_size)]
        return torch.cat(outs).cpu()


EDIT_METHODS = ("posterior", "inversion", "sdedit")
DEFAULT_EDIT_METHOD = "posterior"
# Each method's strength and guidance, measured against the paired truth: the sampled edits at
# 0.4 and guidance 2 (at guidance 4 no slice came closer); the posterior change up to noise
# level 0.75 (its draws spread over POSTERIOR_LEVELS of it), unextrapolated, which came closer
# to the truth than either, so it is the default.
EDIT_DEFAULTS = {"posterior": {"strength": 0.75, "guidance_scale": 1.0},
                 "inversion": {"strength": 0.4, "guidance_scale": 2.0},
                 "sdedit": {"strength": 0.4, "guidance_scale": 2.0}}
DEFAULT_DRAWS = 16  # noise draws the posterior edit averages
# The noise levels the posterior draws take turns at, as fractions of ``strength``: coarse
# levels place the change, fine ones fit it to this anatomy; the spread came closer to the
# truth than any one level.
POSTERIOR_LEVELS = (1.0, 0.8, 0.6, 0.4)
CHANGE_FROM = ("null_edit", "reconstruction", "none")
REFINE = ("edges", "guided", "none")
DEFAULT_REFINE = "edges"  # guided, then moved onto the source's edges: closest to the truth
EDGE_SIGMA = 1.0  # native pixels of smoothing before the source's gradient is taken
GUIDED_EPS = 1e-3  # the guided filter's regulariser, intensities in [0, 1]
GUIDED_RADIUS = 2  # the guided filter's radius in model pixels (2 came closer to the truth than 1)


def guided_filter(guide: np.ndarray, values: np.ndarray, radius: int,
                  eps: float = GUIDED_EPS) -> np.ndarray:
    """He et al.'s guided filter (ECCV 2010): ``values`` made locally linear in ``guide`` over
    (2 radius + 1)^2 windows, so a change computed at the model's coarse grid follows the
    edges of the native-resolution source. Zero in, zero out (the null edit stays exact)."""
    def box(x):
        return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius,
                            count_include_pad=False)

    i = torch.from_numpy(np.asarray(guide, np.float64))[None, None]
    p = torch.from_numpy(np.asarray(values, np.float64))[None, None]
    mean_i, mean_p = box(i), box(p)
    a = (box(i * p) - mean_i * mean_p) / (box(i * i) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return (box(a) * i + box(b))[0, 0].numpy()


def edge_weighted(guide: np.ndarray, values: np.ndarray, radius: int,
                  sigma: float = EDGE_SIGMA) -> np.ndarray:
    """``values`` moved towards the edges of ``guide`` inside each (2 radius + 1)^2 window: times
    the guide's gradient magnitude (after a Gaussian of ``sigma``) over its window mean, so a
    window's mean change is about kept while it gathers where tissue meets CSF, the borders
    atrophy moves. Flat places (the black background) get none; zero in, zero out."""
    half = max(1, math.ceil(4 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float64) / sigma) ** 2)
    taps = taps / taps.sum()
    x = torch.from_numpy(np.asarray(guide, np.float64))[None, None]
    x = F.conv2d(F.pad(x, (half, half, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, half, half), mode="replicate"), taps.view(1, 1, -1, 1))
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                         dtype=torch.float64)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    magnitude = torch.hypot(F.conv2d(x, sobel.view(1, 1, 3, 3)),
                            F.conv2d(x, sobel.T.reshape(1, 1, 3, 3)))
    local = F.avg_pool2d(magnitude, 2 * radius + 1, stride=1, padding=radius,
                         count_include_pad=False)
    return np.asarray(values) * (magnitude / (local + 1e-8))[0, 0].numpy()


def as_slices(images) -> list[np.ndarray]:
    """One image or a list: 8-bit greyscale PIL images or (H, W) uint8 arrays -> arrays."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 2 or \
            not isinstance(images, (list, tuple, np.ndarray, torch.Tensor)):
        images = [images]
    out = []
    for image in images:
        if hasattr(image, "mode"):  # PIL
            if image.mode != "L":
                raise ValueError(f"images must be 8-bit greyscale (mode L), got mode "
                                 f"{image.mode}; convert them first (image.convert('L'))")
            image = np.asarray(image)
        image = np.asarray(image)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"each image must be (H, W) uint8, got {image.shape} {image.dtype}")
        out.append(image)
    if not out:
        raise ValueError("images is empty; give at least one slice")
    return out


class ADNICounterfactualPipeline(ADNIDiffusionPipeline):
    """Edit real slices towards another label: "this brain, with (or without) AD".

    The image-to-image pattern of diffusers on the generator's own components (make it with
    ``ADNICounterfactualPipeline.from_pipe(pipe)``). Each slice is encoded with the VAE (posterior
    mean), taken to noise level ``strength`` either by DDIM inversion under its own label
    (Song et al. 2021; as in Dhinagar et al. 2024 for AD on ADNI) or by adding noise (SDEdit,
    Meng et al. 2022), then denoised by DDIM under the target label with classifier-free
    guidance. DDIM schedulers are made from the saved scheduler's config, so the saved sampler
    is left alone. Inversion runs unguided (guidance breaks its reversibility).

    What comes back (``change_from``): "null_edit" (default) is the source plus the decoded edit
    minus the same path denoised under the source's own label (one batch, same inverted latent
    or noise): only the change the label makes, without the VAE's blur or the round trip's
    drift, which both paths share, and pixels the label leaves alone keep the source's detail.
    "reconstruction" is the source plus the decoded edit minus the decoded source latent;
    "none" the decoded edit itself.

    ``method="posterior"`` samples nothing: the change is the difference of the denoiser's
    posterior means (Tweedie's formula, the DDIM step's predicted clean latent) under the target
    and the source label, on the same noisy latents, averaged over ``num_draws`` noise draws
    that take turns at noise levels ``strength`` x POSTERIOR_LEVELS (``strength`` the highest),
    and decoded; ``guidance_scale`` w extrapolates the target's
    prediction from the source's (x0_source + w (x0_target - x0_source)), so w = 1 is the plain
    difference. It is what the model expects the label to change in this anatomy at those noise
    scales, without the sampling's own texture, and came closest to the paired truth.

    The change is computed at the model's resolution; at the native size it is refined
    by a guided filter with the source as guide and a radius of two model pixels, so it follows
    the source's ventricle walls and sulci instead of spreading as a blur (``refine="guided"``),
    and then, by default (``refine="edges"``), gathered within each model pixel onto the
    source's edges (``edge_weighted``), where atrophy moves the border between tissue and CSF
    (closest to the paired truth of the refinements tried).
    """

    def edit_schedulers(self, num_inference_steps: int, strength: float):
        """(DDIM, its inverse, k): paired DDIM schedules whose last ``k`` steps are the edit."""
        if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
            raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
        config = dict(self.scheduler.config)
        forward = DDIMScheduler.from_config(config, clip_sample=False, timestep_spacing="leading")
        inverse = DDIMInverseScheduler.from_config(config, clip_sample=False,
                                                   timestep_spacing="leading")
        device = self._execution_device
        forward.set_timesteps(num_inference_steps, device=device)
        inverse.set_timesteps(num_inference_steps, device=device)
        return forward, inverse, max(1, round(num_inference_steps * strength))

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Slices -> scaled latents (the VAE posterior mean), at the model's resolution."""
        pixels = np.stack([to_model_input(p, self.resolution) for p in as_slices(images)])
        x = to_unit_range(torch.from_numpy(pixels)[:, None]).to(self._execution_device,
                                                               self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self,
        images,
        source_labels,
        target_labels,
        strength: float | None = None,
        method: str = DEFAULT_EDIT_METHOD,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        change_from: str = "null_edit",
        output_type: str = "pil",
        native_size: bool = True,
        return_dict: bool = True,
        slice_positions=None,
        refine: str = DEFAULT_REFINE,
        num_draws: int = DEFAULT_DRAWS,
    ):
        """The counterfactual of each slice under ``target_labels``.

        Args:
            images: 8-bit greyscale slices (PIL mode L or (H, W) uint8), one or a list; any
                size (padded to a square and resized as the training data was).
            source_labels, target_labels: names or ids, one for all or one per image.
            strength: share of the noise schedule the edit spans, in (0, 1]: higher changes more
                (default: the method's, ``EDIT_DEFAULTS``).
            method: "posterior" (the difference of the label-conditional predictions, the
                class docstring; noise from ``generator``), "inversion" (deterministic) or
                "sdedit" (noise drawn from ``generator``).
            guidance_scale: default the method's (``EDIT_DEFAULTS``); the posterior method's
                extrapolation (the class docstring).
            num_inference_steps: default the model's saved value.
            change_from: "null_edit", "reconstruction" or "none" (the class docstring).
            output_type: "pil", "np", "pt" or "latent" (the edited, scaled latents).
            native_size: crop to the native 256x240 (True) or keep the model's square.
            slice_positions: a level-conditioned model's level of each slice in [0, 1], one for
                all or one per image (required there: the edit keeps the slice's level, which
                inversion and denoising both read; a label-only model takes none).
            refine: "edges", "guided" or "none": how the change is brought to the native size
                (the class docstring); only where the source has the native size.
            num_draws: the posterior method's noise draws, averaged.

        Returns:
            ImagePipelineOutput with ``images``.

        >>> edit = ADNICounterfactualPipeline.from_pipe(pipe)
        >>> ad = edit(nc_slices, "NC", "AD").images  # or method="inversion", strength=0.4
        """
        if method not in EDIT_METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {', '.join(EDIT_METHODS)}")
        strength = EDIT_DEFAULTS[method]["strength"] if strength is None else strength
        if guidance_scale is None:
            guidance_scale = EDIT_DEFAULTS[method]["guidance_scale"]
        if change_from not in CHANGE_FROM:
            raise ValueError(f"unknown change_from {change_from!r}; use one of "
                             f"{', '.join(CHANGE_FROM)}")
        if refine not in REFINE:
            raise ValueError(f"unknown refine {refine!r}; use one of {', '.join(REFINE)}")
        guidance_scale, num_inference_steps = self.check_settings(guidance_scale,
                                                                  num_inference_steps)
        self.check_output_type(output_type, extra=("latent",))
        slices = as_slices(images)
        sources, targets = (self._per_image(labels, len(slices))
                            for labels in (source_labels, target_labels))
        positions = self._levels(slice_positions, len(slices))
        forward, inverse, k = self.edit_schedulers(num_inference_steps, strength)
        start = self.encode(slices)
        if method == "posterior":
            if change_from != "null_edit":
                raise ValueError("the posterior method's change is between the two labels' "
                                 "predictions: change_from must be null_edit")
            if not (isinstance(num_draws, int) and num_draws >= 1):
                raise ValueError(f"num_draws must be a whole number >= 1, got {num_draws!r}")
            levels = [forward.timesteps[-max(1, round(num_inference_steps * strength * f))]
                      for f in POSTERIOR_LEVELS]
            latents, change = self._posterior_change(
                start, sources, targets, positions, forward, levels, guidance_scale, num_draws,
                generator, decode=output_type != "latent")
        else:
            latents, change = self._sampled_change(
                start, sources, targets, positions, method, forward, inverse, k, guidance_scale,
                generator, decode=output_type != "latent" and change_from != "none",
                paired=change_from == "null_edit" and output_type != "latent")
        if output_type == "latent":
            images = latents
        elif change is None:  # change_from "none": the decoded edit itself
            images = self.postprocess(self.decode_latents(latents), output_type, native_size)
        else:
            images = self.pixels_output(self._add_change(slices, change, native_size, refine),
                                        output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _sampled_change(self, start, sources, targets, positions, method: str, forward, inverse,
                        k: int, guidance_scale: float, generator, decode: bool, paired: bool):
        """(edited latents, decoded change or None): inversion or SDEdit to step ``k``, then
        guided DDIM under the target label; ``paired``: the same path under the source label in
        the same batch is the change's reference (the null edit), else the source's latent."""
        if method == "inversion":
            noisy = self.denoise(start, sources, 1.0, inverse, inverse.timesteps[:k],
                                 positions=positions)
        else:
            noise = randn_tensor(start.shape, generator=generator, device=start.device,
                                 dtype=start.dtype)
            noisy = forward.add_noise(start, noise, forward.timesteps[-k:][:1])
        if paired:  # [target, source label] from the same noisy latents, in one batch
            noisy, targets = torch.cat([noisy, noisy]), torch.cat([targets, sources])
            positions = None if positions is None else torch.cat([positions, positions])
        latents = self.denoise(noisy, targets, guidance_scale, forward, forward.timesteps[-k:],
                               generator, positions)
        if not decode:
            return latents, None
        edited, reference = latents.chunk(2) if paired else (latents, start)
        return latents, self.decode_latents(edited) - self.decode_latents(reference)

    def _posterior_change(self, start, sources, targets, positions, scheduler, levels,
                          guidance_scale: float, num_draws: int, generator, decode: bool):
        """(target's predicted latents, decoded change or None): the clean slice predicted under
        the target and the source label from the same noisy latents, each decoded, averaged over
        ``num_draws`` noise draws that take turns at the timesteps ``levels``; none where
        target = source."""
        labels = torch.cat([targets, sources])
        both = condition_inputs(self.unet, labels,
                                None if positions is None else torch.cat([positions, positions]))
        latents = edited = reference = 0.0
        for draw in range(num_draws):
            t = levels[draw % len(levels)]
            noise = randn_tensor(start.shape, generator=generator, device=start.device,
                                 dtype=start.dtype)
            noisy = scheduler.add_noise(start, noise, t[None]).repeat(2, 1, 1, 1)
            model_input = scheduler.scale_model_input(noisy, t)
            if self.stack_conditioned:
                model_input = torch.cat([model_input, neighbour_channels(None, noisy)], dim=1)
            out = self.unet(model_input, t, **both).sample
            target, source = scheduler.step(out, t, noisy).pred_original_sample.chunk(2)
            target = source + guidance_scale * (target - source)
            if not decode:
                latents = latents + target / num_draws
                continue
            edited = edited + self.decode_latents(target) / num_draws
            reference = reference + self.decode_latents(source) / num_draws
        if not decode:
            return latents, None
        same = (targets == sources).cpu()[:, None, None, None]
        return None, (edited - reference) * (~same).float()

    def _levels(self, slice_positions, n: int) -> torch.Tensor | None:
        """(n,) levels for a level-conditioned model (checked; one for all or one per image),
        None for a label-only one."""
        self.check_takes_levels(slice_positions)
        if not self.level_conditioned:
            return None
        if slice_positions is None:
            raise ValueError("this model is level-conditioned: give slice_positions, each "
                             "slice's level in its patient's stack (0 = lowest, 1 = highest)")
        return self.positions_for(slice_positions, 1, n).to(self._execution_device)

    def _per_image(self, labels, n: int) -> torch.Tensor:
        ids = self.label_ids(labels)
        if len(ids) not in (1, n):
            raise ValueError(f"give one label or one per image ({n}), got {len(ids)}")
        return torch.tensor(ids * n if len(ids) == 1 else ids, device=self._execution_device)

    def _add_change(self, slices: list[np.ndarray], change: torch.Tensor,
                    native_size: bool, refine: str = DEFAULT_REFINE) -> np.ndarray:
        """Each source plus its (N, 1, R, R) change, at the source's native size when it has it
        (the change resized up, then guided by the source and gathered on its edges, as
        ``refine`` says), else at the model's square (cropped when asked)."""
        size = tuple(self.config.native_size)
        pixel = max(size) / self.resolution  # native pixels per model pixel
        radius = max(1, round(GUIDED_RADIUS * pixel))
        out = []
        for source, delta in zip(slices, change[:, 0].numpy(), strict=True):
            square = to_model_input(source, self.resolution)
            if native_size and source.shape == size[::-1]:
                delta = to_native(delta.astype(np.float32), size) * 127.5
                if refine != "none":
                    delta = guided_filter(source / 255.0, delta / 255.0, radius) * 255.0
                if refine == "edges":
                    delta = edge_weighted(source / 255.0, delta, max(1, round(pixel)))
                out.append(np.clip(source + delta + 0.5, 0, 255).astype(np.uint8))
                continue
            edited = to_pixels(to_unit_range(torch.tensor(square)) + torch.from_numpy(delta))
            out.append(to_native(edited.numpy(), size) if native_size else edited.numpy())
        return np.stack(out)
