"""What the command-line scripts share: flags + config overrides, the run folder, the device."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from .config import Config, keys_help, load_config
from .errors import UserError
from .ldm.pipeline_adni import SCHEDULERS

DEFAULT_DATA = Path("data/phantom")  # what `make demo` writes
DEFAULT_MODEL = Path("outputs/demo/model")
DEFAULT_VAE = Path("outputs/demo/vae_run/vae")
# the trainers' config when none is given: the one `make demo` uses
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


class ScriptParser(argparse.ArgumentParser):
    """argparse, but a flag given twice is an error (argparse silently keeps the last)."""

    def parse_known_args(self, args=None, namespace=None):
        import sys

        tokens = list(sys.argv[1:] if args is None else args)
        flags = [t.split("=", 1)[0] for t in tokens if t.startswith("--")]
        known = {o for action in self._actions for o in action.option_strings}
        for flag in known.intersection(flags):
            if flags.count(flag) > 1:
                self.error(f"{flag} is given twice; give it once")
        return super().parse_known_args(args, namespace)


def script_parser(doc: str, *, config: bool = True) -> argparse.ArgumentParser:
    parser = ScriptParser(description=doc, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        default = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
        parser.add_argument("--config", default=default,
                            help="YAML experiment file (default: the demo's configs/demo.yaml); "
                                 "any of its keys can also be given as --key value or "
                                 "--section.key value")
    return parser


def parse_with_config(parser: argparse.ArgumentParser, section: str,
                      argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """Known flags -> args; every other ``--key value`` -> a config override (unknown = error)."""
    parser.epilog = parser.epilog or keys_help(section)
    args, rest = parser.parse_known_args(argv)
    return args, load_config(args.config, rest, section=section)


def true_false(text: str) -> bool:
    """An argparse type for true / false flags, written as the YAML configs write them."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


MAX_SEED = 2**32 - 1  # the config's seed rule; larger seeds would wrap onto smaller ones
MAX_IMAGES = 100_000  # per label: more is a typo, not a sample (sample.py writes as it goes)


def whole_number(low: int, high: int, why: str = ""):
    """An argparse type: an integer in [low, high] (``why``: the reason for the bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low:,} to "
                                             f"{high:,}{why}, got {value:,}")
        return value

    return parse


def seed_arg(parser: argparse.ArgumentParser, default, help: str | None = None) -> None:
    """--seed, range-checked: a seed past the range would silently wrap onto another."""
    parser.add_argument("--seed", type=whole_number(0, MAX_SEED, " (2**32 - 1)"),
                        default=default, help=help)


def check_image_count(flag: str, value: int, low: int = 1) -> int:
    """An image count from ``low`` to :data:`MAX_IMAGES`, or a UserError naming the flag."""
    if not low <= value <= MAX_IMAGES:
        raise UserError(f"{flag} must be a whole number from {low} to {MAX_IMAGES:,} per label "
                        f"(larger counts are typos: split a big sample into runs), got {value:,}")
    return value


def add_run_args(parser: argparse.ArgumentParser, default_output: str) -> None:
    """The flags both trainers take besides the config: data, output folder, resume."""
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="AD_NC folder (train/ test/)")
    parser.add_argument("--output_dir", default=default_output, help="where the run is written")
    parser.add_argument("--resume_from_checkpoint", default=None,
                        help="'latest' or a checkpoint folder; a fresh run if none exists")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run in --output_dir and start afresh")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The flags over a model's saved sampler, steps and guidance (one set for every script)."""
    group = parser.add_argument_group("sampling (default: the settings saved with the model)")
    group.add_argument("--scheduler", default=None, choices=list(SCHEDULERS))
    group.add_argument("--num_inference_steps", type=int, default=None)
    group.add_argument("--guidance_scale", type=float, default=None, metavar="1..100",
                       help="classifier-free guidance; 1 = no guidance, larger = more typical")
    group.add_argument("--guidance_interval", type=float, nargs=2, default=None,
                       metavar=("LOW", "HIGH"),
                       help="guide only the steps whose noise level sigma is in (LOW, HIGH], "
                            "the conditional model alone elsewhere; 0 inf: every step")


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags that were given, for ``sampling.sampling_settings``."""
    return {"scheduler": args.scheduler, "num_inference_steps": args.num_inference_steps,
            "guidance_scale": args.guidance_scale, "guidance_interval": args.guidance_interval}


def model_script_parser(doc: str, out_default: str, *, data: bool) -> argparse.ArgumentParser:
    """The flags of every script that uses a trained model: model, [data,] output, device and the
    sampling flags over the model's saved settings."""
    parser = script_parser(doc, config=False)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder")
    if data:
        parser.add_argument("--data", default=str(DEFAULT_DATA), help="AD_NC folder")
        parser.add_argument("--skip_corrupt", default=None, type=true_false,
                            metavar="{true,false}",
                            help="skip (and count) unreadable images instead of stopping "
                                 "(default: the model's data.skip_corrupt)")
    parser.add_argument("--out", default=None, help=f"output folder (default {out_default})")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    add_sampling_args(parser)
    return parser


MAX_LEVELS = 100


def parse_slice_positions(tokens: list[str] | None) -> list[float] | None:
    """``--slice_position P`` (one level in [0, 1]) or ``--slice_position all K`` (K levels
    evenly from the lowest, 0, to the highest, 1) -> the levels; None when the flag is absent."""
    if tokens is None:
        return None
    usage = ("--slice_position takes one number in [0, 1] (0 = a patient's lowest slice, 1 = "
             f"its highest) or 'all K' (K evenly spaced levels, K from 2 to {MAX_LEVELS}), got "
             f"{' '.join(tokens)!r}")
    if tokens and tokens[0].lower() == "all":
        if len(tokens) != 2 or not tokens[1].isdigit() or not 2 <= int(tokens[1]) <= MAX_LEVELS:
            raise UserError(usage)
        return np.linspace(0, 1, int(tokens[1])).round(6).tolist()
    if len(tokens) != 1:
        raise UserError(usage)
    try:
        value = float(tokens[0])
    except ValueError:
        raise UserError(usage) from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise UserError(usage)
    return [value]
