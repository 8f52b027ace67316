"""Sampling speed: images per second with DPM-Solver++ (20 steps) vs DDPM (1000 steps).

    python bench/bench_sample.py --model outputs/demo/model [--num_images 16]

Both runs use the same model, guidance and per-image seeds; DDPM-1000 is the ancestral sampler
the UNet was trained for, the reference the fast sampler is compared with.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.pipeline import make_scheduler  # noqa: E402
from pipelines.sampling import generate, load_pipeline, saved_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="outputs/demo/model")
    parser.add_argument("--num_images", type=int, default=16)
    parser.add_argument("--runs", default="dpmsolver++:20,ddim:50,ddpm:1000")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    guidance = saved_config(args.model).sample.guidance_scale
    base = pipe.scheduler.config
    for run in args.runs.split(","):
        name, steps = run.split(":")
        pipe.scheduler = make_scheduler(name, base)
        t0 = time.perf_counter()
        generate(pipe, "AD", args.num_images, seed=0, batch_size=args.num_images,
                 guidance_scale=guidance, num_inference_steps=int(steps), progress=False)
        dt = time.perf_counter() - t0
        print(f"{name:12s} {int(steps):5d} steps: {args.num_images / dt:8.2f} img/s "
              f"({dt:.1f} s for {args.num_images})")


if __name__ == "__main__":
    main()
