"""Sampling speed: images per second with DPM-Solver++ (20 steps) vs DDPM (1000 steps).

    python bench/bench_sample.py --model outputs/demo/model [--num_images 16]

Both runs use the same model, guidance and per-image seeds; DDPM-1000 is the ancestral sampler
the UNet was trained for, the reference the fast sampler is compared with.
"""

import argparse
import time

from pipelines.ldm.pipeline_adni import make_scheduler
from pipelines.sampling import generate, load_pipeline, sampling_settings


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="outputs/demo/model")
    parser.add_argument("--num_images", type=int, default=16)
    parser.add_argument("--runs", default="dpmsolver++:20,ddim:50,ddpm:1000")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    base = pipe.scheduler.config
    for run in args.runs.split(","):
        name, steps = run.split(":")
        pipe.scheduler = make_scheduler(name, base)
        settings = sampling_settings(pipe, num_inference_steps=int(steps))
        t0 = time.perf_counter()
        generate(pipe, "AD", args.num_images, seed=0, batch_size=args.num_images,
                 settings=settings, progress=False)
        dt = time.perf_counter() - t0
        print(f"{name:12s} {int(steps):5d} steps: {args.num_images / dt:8.2f} img/s "
              f"({dt:.1f} s for {args.num_images})")


if __name__ == "__main__":
    main()
