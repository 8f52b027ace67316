"""Cost of a synthetic subject: seconds for one stack of K slices at a model's sampling settings.

    python bench/bench_subjects.py --model outputs/demo_stack/model [--stack 20] [--subjects 1]
    python bench/bench_subjects.py --config configs/demo.yaml  # untrained, the demo's sizes

With ``--config`` the VAE and stack-conditioned UNet are built at that config's sizes with random
weights (the cost of a UNet call does not depend on its weights) and sample with the config's
sampler, steps and guidance. Prints the seconds per subject and the machine's load average.
"""

import argparse
import os
import time

import torch

from pipelines.config import load_config
from pipelines.ldm.objective import training_scheduler
from pipelines.ldm.trainer import build_pipeline
from pipelines.ldm.unet import build_unet
from pipelines.sampling import load_pipeline
from pipelines.vae.model import build_vae, vae_downsample_factor


def untrained_pipeline(config: str, stack_length: int):
    cfg = load_config(config, ["--unet.level_conditioning", "true",
                               "--unet.stack_conditioning", "true"])
    vae = build_vae(cfg.vae, cfg.data.resolution)
    unet = build_unet(cfg.unet, vae.config.latent_channels,
                      cfg.data.resolution // vae_downsample_factor(vae))
    return build_pipeline(vae, unet.eval(), training_scheduler(cfg.unet), cfg.sample, stack_length)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model")
    group.add_argument("--config")
    parser.add_argument("--stack", type=int, default=20)
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pipe = load_pipeline(args.model) if args.model else untrained_pipeline(args.config, args.stack)
    pipe.set_progress_bar_config(disable=True)
    settings = pipe.sampling_settings()
    print(f"{settings}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} before")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pipe.subjects("AD", num_subjects=args.subjects, stack=args.stack,
                      generator=torch.manual_seed(0), output_type="np")
        dt = time.perf_counter() - t0
        print(f"{args.subjects} subject(s) x {args.stack} slices: {dt:.1f} s "
              f"({dt / args.subjects:.1f} s per subject), load average "
              f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
