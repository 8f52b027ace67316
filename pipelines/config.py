"""Experiment configuration: one dataclass per YAML section, file + command-line overrides.

A YAML file holds only what differs from the defaults below. Any key can be overridden on the
command line, either dotted (``--unet.learning_rate 2e-4``) or flat (``--resolution 64``); a flat
key is looked up first in the running script's own section, then in the one other section that
has it. Unknown keys and values of the wrong type are errors, never silent no-ops.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError
from .ldm.pipeline_adni import SCHEDULERS, check_interval
from .ldm.unet import CONDITIONINGS
from .stylegan2.networks import AUGMENTATIONS


@dataclass
class DataConfig:
    resolution: int = 64  # side of the square the padded native slice is resized to
    flip: bool = True  # horizontal flip augmentation for training (brains are near-symmetric)
    val_patients_fraction: float = 0.1  # share of train patients held out for validation
    skip_corrupt: bool = False  # True: count and report unreadable images instead of stopping
    split_seed: int = 0  # which patients go to validation


@dataclass
class TrainConfig:
    """What every trainer shares (the loop in ``pipelines.training``)."""

    max_train_steps: int = 1000
    max_train_minutes: float = 0.0  # 0 = no wall-clock limit; else stop (and save) after this long
    train_batch_size: int = 32
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 50
    lr_scheduler: str = "cosine"  # any diffusers get_scheduler name
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"  # auto (accelerate launch's choice, else bf16) | no | fp16 |
    #   bf16; a GPU without bf16 (before Ampere) stops with a message
    allow_tf32: bool = True  # TF32 tensor cores for fp32 matmuls/convolutions (Ampere on GPUs)
    scale_lr: str = "none"  # how steps and LR follow the number of processes N: none (as
    #   written; N x the samples) | linear | sqrt (budget in samples: steps / N, LR x N or x sqrt N)
    report_to: str = "tensorboard"  # tensorboard | wandb | tensorboard,wandb (OUTPUT_DIR/logs)
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    validation_steps: int = 250  # image grid every N steps
    log_steps: int = 10
    seed: int = 0
    num_workers: int = 0  # processes decoding the slices (0: the training process itself)
    ema_decay: float = 0.0  # exponential moving average of the weights, saved as the model; 0 = off
    ema_warmup: bool = True  # decay ramps up from 0 (diffusers EMAModel), capped at ema_decay


@dataclass
class VAEConfig(TrainConfig):
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    mid_block_add_attention: bool = False
    norm_num_groups: int = 16
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    ssim_weight: float = 0.2  # weight of the (1 - SSIM) term beside L1
    disc_weight: float = 0.1  # patch discriminator (hinge) weight once it is on; 0 disables it
    disc_start_step: int = 500  # warm-up: discriminator off before this step
    disc_learning_rate: float = 2e-4
    disc_channels: int = 32
    scale_factor_images: int = 512  # training images used to measure 1/std of the latents
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less
    #   memory for about a third more compute
    train_crop: int = 0  # train on random square crops of this side (0 = whole slices): the
    #   convolutional autoencoder learns from crops and runs on whole slices, so a 128 px VAE
    #   can train at a 64 px step's cost


@dataclass
class UNetConfig(TrainConfig):
    block_out_channels: list = field(default_factory=lambda: [64, 128, 192])
    layers_per_block: int = 1
    attention_levels: list = field(default_factory=lambda: [False, False, True])
    attention_head_dim: int = 32
    conditioning: str = "class_embed"  # class_embed (added to the time embedding) | cross_attention
    #   (a one-hot label token read by cross-attention); docs/DESIGN.md compares the two
    level_conditioning: bool = False  # also condition on the slice's level in its patient's
    #   stack (0 = lowest slice number, 1 = highest); needs conditioning class_embed
    stack_conditioning: bool = False  # also read the next-lower slice's latent of the same
    #   patient (synthetic subjects slice by slice, pipe.subjects); needs level_conditioning
    neighbour_drop_prob: float = 0.15  # that neighbour left out this often (the first slice)
    cond_drop_prob: float = 0.15  # label dropped to the null label this often (CFG; the level
    #   is always given)
    prediction_type: str = "v_prediction"  # epsilon | v_prediction
    snr_gamma: float = 5.0  # min-SNR-gamma weighting; 0 disables it
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    ema_decay: float = 0.999
    learning_rate: float = 3e-4
    adam_weight_decay: float = 1e-2
    num_validation_images: int = 4  # per label in the grid every validation_steps
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less
    #   memory for about a third more compute


@dataclass
class StyleGAN2Config(TrainConfig):
    """The seed's baseline (train_stylegan2.py); defaults follow stylegan2-ada's config F."""

    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    channel_base: int = 4096  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 256
    learning_rate: float = 2.5e-3  # generator and discriminator alike
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 0.0  # GANs are not clipped
    r1_gamma: float = 0.05  # ada's heuristic: 2e-4 * resolution**2 / batch
    r1_interval: int = 16  # lazy regularisation: R1 every N steps, scaled by N
    pl_weight: float = 2.0  # path length regularisation; 0 disables it
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing_prob: float = 0.9
    w_avg_beta: float = 0.995  # running per-label mean of w, for truncation
    augment: str = "color,translation,cutout"  # DiffAugment policy ('' = none)
    ema_decay: float = 0.998
    num_validation_images: int = 4  # per label in the grid every validation_steps


@dataclass
class SampleConfig:
    guidance_scale: float = 2.0
    guidance_interval: list = field(default_factory=list)  # [low, high]: guide only the steps
    #   whose noise level sigma is in (low, high] (Kynkaanniemi et al. 2024); []: every step
    num_inference_steps: int = 20
    scheduler: str = "dpmsolver++"  # dpmsolver++ | sde-dpmsolver++ | ddim | euler | ddpm
    num_images: int = 16
    batch_size: int = 32
    seed: int = 0


@dataclass
class EvalConfig:
    num_images: int = 200  # generated per label
    judge_steps: int = 600
    judge_batch_size: int = 64
    judge_learning_rate: float = 1e-3
    tstr_steps: int = 300  # TSTR/TRTR classifiers: 300 x 64 = 64 epochs of 2 x 150 images
    max_real_images: int = 2000  # cap on real images per split used by the metrics
    embed_method: str = "umap"  # umap | tsne


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    stylegan2: StyleGAN2Config = field(default_factory=StyleGAN2Config)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


# ----------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Rule:
    """What one config value may be: a range (``low``/``high``, each inclusive or not), a
    multiple, choices, comma-separated parts, or a check on a list; ``text`` is the rule as
    messages and ``--describe`` state it."""

    text: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    multiple: int = 0
    choices: tuple = ()
    parts: tuple = ()  # a comma-separated subset of these (or empty)
    items: str = ""  # "positive ints" | "bools" | "interval" for list values

    def check(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if self.parts:
            return all(p in ("", *self.parts) for p in value.split(","))
        if self.items == "interval":  # [] or [low, high] numbers, as the pipeline checks them
            return isinstance(value, list) and (not value or (
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and _finite_interval(value)))
        if self.items:
            if not isinstance(value, list) or not value:
                return False
            if self.items == "bools":
                return all(isinstance(v, bool) for v in value)
            return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.multiple and value % self.multiple:
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and
                                                           value == self.high))


def _finite_interval(value: list) -> bool:
    """``pipeline_adni.check_interval`` accepts it, with a finite high end."""
    try:
        return math.isfinite(check_interval(value)[1])
    except ValueError:
        return False


def one_of(*choices: str) -> Rule:
    return Rule("one of " + ", ".join(choices), choices=choices)


MAX_STEPS = 10_000_000  # larger counts are typos, not runs: refused rather than hanging
POSITIVE_COUNT = Rule(f"an integer from 1 to {MAX_STEPS:,}", 1, MAX_STEPS)
COUNT = Rule(f"an integer from 0 to {MAX_STEPS:,}", 0, MAX_STEPS)
POSITIVE = Rule("a finite number > 0", 0, None, low_open=True)
NON_NEGATIVE = Rule("a finite number >= 0", 0)
FRACTION = Rule("a number in [0, 1)", 0, 1, high_open=True)
PROBABILITY = Rule("a number in [0, 1]", 0, 1)
OPEN_UNIT = Rule("a number in (0, 1)", 0, 1, low_open=True, high_open=True)
SEED = Rule("an integer from 0 to 2**32 - 1", 0, 2**32 - 1)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup")

RULES = {
    "resolution": Rule("a multiple of 8 from 8 to 1024", 8, 1024, multiple=8),
    "val_patients_fraction": FRACTION, "split_seed": SEED, "seed": SEED,
    "max_train_minutes": NON_NEGATIVE, "lr_warmup_steps": COUNT, "disc_start_step": COUNT,
    "checkpoints_total_limit": COUNT, "train_crop": COUNT,
    "num_workers": Rule("an integer from 0 to 64", 0, 64),
    "lr_scheduler": one_of(*LR_SCHEDULERS),
    "adam_beta1": FRACTION, "adam_beta2": FRACTION, "ema_decay": FRACTION,
    "cond_drop_prob": FRACTION, "w_avg_beta": FRACTION, "style_mixing_prob": PROBABILITY,
    "pl_decay": PROBABILITY, "beta_start": OPEN_UNIT, "beta_end": OPEN_UNIT,
    "mixed_precision": one_of("auto", "no", "fp16", "bf16"),
    "scale_lr": one_of("none", "linear", "sqrt"),
    "report_to": one_of("tensorboard", "wandb", "tensorboard,wandb"),
    "conditioning": one_of(*CONDITIONINGS),
    "prediction_type": one_of("epsilon", "v_prediction"),
    "beta_schedule": one_of("linear", "scaled_linear", "squaredcos_cap_v2"),
    "scheduler": one_of(*SCHEDULERS),
    "embed_method": one_of("umap", "tsne"),
    "guidance_scale": Rule("a number from 1 (no guidance) to 100 (beyond, the guided step "
                           "saturates every pixel)", 1, 100),
    "guidance_interval": Rule("[] (guidance at every step) or [low, high] finite noise levels "
                              "with 0 <= low < high", items="interval"),
    "num_train_timesteps": Rule("an integer from 2 to 10,000", 2, 10_000),
    "num_inference_steps": Rule("an integer from 1 to 1,000", 1, 1000),
    "block_out_channels": Rule("a non-empty list of positive integers", items="positive ints"),
    "attention_levels": Rule("a non-empty list of true/false", items="bools"),
    "augment": Rule("comma-separated " + ", ".join(AUGMENTATIONS) + " (or empty)",
                    parts=AUGMENTATIONS),
}


def rule_for(key: str, value) -> Rule | None:
    """The rule of a key: its own, else by type (counts and rates must be positive)."""
    if key in RULES:
        return RULES[key]
    if isinstance(value, bool) or isinstance(value, str):
        return None
    if isinstance(value, int):
        return POSITIVE_COUNT
    if isinstance(value, float):
        return POSITIVE if key.endswith(("learning_rate", "lr_mul")) else NON_NEGATIVE
    return None


def check_value(key: str, value, where: str, source: str) -> None:
    rule = rule_for(key, value)
    if rule is not None and not rule.check(value):
        raise UserError(f"config key {where} = {value!r} (from {source}) must be {rule.text}")


def validate(cfg: Config, source: str = "the config") -> None:
    """Every value against its rule, then the rules between keys: what a trainer checks first,
    whether its config came from a file, flags or code."""
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            check_value(f.name, getattr(obj, f.name), f"{section}.{f.name}", source)
    check_config(cfg)


def check_config(cfg: Config) -> None:
    """The rules that tie keys together, checked once the file and flags are applied."""
    for name in ("vae", "unet"):
        section = getattr(cfg, name)
        widths = section.block_out_channels
        groups = section.norm_num_groups if name == "vae" else min(32, min(widths))
        if any(w % groups for w in widths):
            raise UserError(f"config keys {name}.block_out_channels {widths} must each be a "
                            f"multiple of the norm group count {groups}")
    if cfg.unet.beta_start >= cfg.unet.beta_end:
        raise UserError(f"config keys unet.beta_start {cfg.unet.beta_start} must be below "
                        f"unet.beta_end {cfg.unet.beta_end}")
    if len(cfg.unet.attention_levels) != len(cfg.unet.block_out_channels):
        raise UserError(f"config key unet.attention_levels needs one entry per "
                        f"unet.block_out_channels entry ({len(cfg.unet.block_out_channels)}), "
                        f"got {cfg.unet.attention_levels}")
    if cfg.unet.level_conditioning and cfg.unet.conditioning != "class_embed":
        raise UserError(f"config key unet.level_conditioning true needs unet.conditioning "
                        f"class_embed (the level joins the label's embedding), got "
                        f"{cfg.unet.conditioning!r}")
    if cfg.unet.stack_conditioning and not cfg.unet.level_conditioning:
        raise UserError("config key unet.stack_conditioning true needs unet.level_conditioning "
                        "true (the stack's slices are placed by level)")
    if not 0 <= cfg.unet.neighbour_drop_prob < 1:
        raise UserError(f"config key unet.neighbour_drop_prob must be in [0, 1), got "
                        f"{cfg.unet.neighbour_drop_prob}")
    factor = 2 ** (len(cfg.vae.block_out_channels) - 1)
    crop = cfg.vae.train_crop
    if crop and (crop % factor or crop > cfg.data.resolution):
        raise UserError(f"config key vae.train_crop {crop} must be 0 (whole slices) or a multiple "
                        f"of the VAE's downsampling factor {factor} up to data.resolution "
                        f"{cfg.data.resolution}")
    if cfg.data.resolution % factor:
        raise UserError(f"config key data.resolution {cfg.data.resolution} must be a multiple of "
                        f"the VAE's downsampling factor {factor} (2 ** (len(vae.block_out_"
                        "channels) - 1))")


def describe() -> str:
    """Every key: section, type, default and rule (``python -m pipelines.config --describe``)."""
    lines = ["| key | type | default | rule |", "|---|---|---|---|"]
    for section in SECTIONS:
        obj = getattr(Config(), section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            rule = rule_for(f.name, value)
            text = rule.text if rule else ("true or false" if isinstance(value, bool) else "text")
            lines.append(f"| {section}.{f.name} | {type(value).__name__} | {value!r} | {text} |")
    return "\n".join(lines)


def keys_help(section: str) -> str:
    """The config keys a script's ``--help`` lists: its own section's and data's, each with its
    default, as ``--key value`` overrides them."""
    lines = ["config keys (override any with --key value or --section.key value; defaults "
             "below, before the --config file; every key: python -m pipelines.config --describe):"]
    for name in ("data", section, *(("sample",) if section == "unet" else ())):
        for f in dataclasses.fields(getattr(Config(), name)):
            value = getattr(getattr(Config(), name), f.name)
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            lines.append(f"  --{name}.{f.name} {text.removesuffix('...').strip()}")
    return "\n".join(lines)


def _coerce(value, annotation, where: str):
    """Check ``value`` against the field's type (YAML already parsed it), converting int->float."""
    target = annotation
    if isinstance(target, str):
        target = {"int": int, "float": float, "bool": bool, "str": str, "list": list}.get(target)
    if target is str and isinstance(value, bool):
        if value is False and where.endswith(".mixed_precision"):
            return "no"  # YAML 1.1 reads the documented value `no` as false
        raise UserError(f"config key {where} expects text, got {value!r} (YAML reads yes/no/on/"
                        "off as true/false); write the value in quotes")
    if target is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "2e-4" as a string
        except ValueError:
            raise UserError(f"config key {where} expects a number, got {value!r}") from None
    if target is int and isinstance(value, bool):
        raise UserError(f"config key {where} expects an integer, got {value!r}")
    if target is not None and not isinstance(value, target):
        raise UserError(f"config key {where} expects {target.__name__}, got {value!r}")
    return value


def _apply(section_obj, section: str, values, source: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"config section '{section}' (from {source}) must be a mapping of keys, "
                        f"got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
        if key not in fields:
            raise UserError(
                f"unknown config key '{section}.{key}'; valid keys: {', '.join(sorted(fields))}"
            )
        value = _coerce(value, fields[key].type, f"{section}.{key}")
        check_value(key, value, f"{section}.{key}", source)
        setattr(section_obj, key, value)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _resolve_flat_key(key: str, own_section: str | None) -> str:
    if own_section and key in {f.name for f in dataclasses.fields(getattr(Config(), own_section))}:
        return own_section
    owners = [
        s for s in SECTIONS if key in {f.name for f in dataclasses.fields(getattr(Config(), s))}
    ]
    if len(owners) == 1:
        return owners[0]
    if not owners:
        raise UserError(f"unknown option '--{key}' (not a flag nor a config key); see --help")
    raise UserError(f"'--{key}' is in several sections ({', '.join(owners)}); write e.g. "
                    f"--{owners[0]}.{key}")


class DuplicateKey(yaml.YAMLError):
    """A mapping in a YAML file names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base loader names it
                break
            if duplicate:
                raise DuplicateKey(f"key {key!r} appears twice in one mapping (line "
                                   f"{key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str):
    """``yaml.safe_load`` that raises :class:`DuplicateKey` for a key given twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, section: str | None = None
) -> Config:
    """Defaults <- YAML file <- ``--key value`` overrides (``section``: the script's own stage)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise UserError(f"--config {path} is a folder; give a YAML file, e.g. "
                            "configs/demo.yaml")
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pick one from configs/")
        try:
            raw = read_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
        except OSError as err:
            raise UserError(f"config file {path} cannot be read ({err.strerror})") from None
        except DuplicateKey as err:
            raise UserError(f"config file {path}: {err}; keep one (YAML would silently use the "
                            "last)") from None
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must be a mapping of sections")
        for name, values in raw.items():
            if name not in SECTIONS:
                raise UserError(f"unknown config section '{name}' in {path}; valid: {SECTIONS}")
            _apply(getattr(cfg, name), name, values or {}, str(path))
    given = set()
    for key, value in _pairs(overrides or []):
        if "." in key:
            name, key = key.split(".", 1)
            if name not in SECTIONS:
                raise UserError(f"unknown config section in '--{name}.{key}'; valid: {SECTIONS}")
        else:
            name = _resolve_flat_key(key, section)
        if (name, key) in given:
            raise UserError(f"config key {name}.{key} is given twice on the command line; give "
                            "it once")
        given.add((name, key))
        _apply(getattr(cfg, name), name, {key: _parse_value(value)}, f"--{key}")
    check_config(cfg)
    return cfg


def _pairs(tokens: list[str]):
    it = iter(tokens)
    for token in it:
        if not token.startswith("--"):
            raise UserError(f"unexpected argument '{token}'; overrides look like --key value")
        token = token[2:]
        if "=" in token:
            key, value = token.split("=", 1)
        else:
            key = token
            value = next(it, None)
            if value is None:
                raise UserError(f"option '--{key}' needs a value")
        yield key, value


def config_from_dict(raw: dict) -> Config:
    """Rebuild a saved config (e.g. from a model folder)."""
    cfg = Config()
    for name, values in raw.items():
        if name in SECTIONS:
            _apply(getattr(cfg, name), name, values or {}, "the saved config.yaml")
    return cfg


def check_positive(**values) -> None:
    """Raise a UserError for any value that is not > 0."""
    for name, value in values.items():
        if value is None or value <= 0:
            raise UserError(f"--{name} must be a positive number, got {value}")



def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.config --describe``: every key with its type, default and rule."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipelines.config", description=main.__doc__)
    parser.add_argument("--describe", action="store_true", help="print the schema (markdown)")
    parser.add_argument("--check", metavar="YAML", help="load a config file and report problems")
    args = parser.parse_args(argv)
    if args.check:
        try:
            load_config(args.check)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{args.check}: ok")
    if args.describe or not args.check:
        print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
