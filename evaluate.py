"""Measure a trained model: image quality, label faithfulness, diversity, novelty, usefulness.

    python evaluate.py                                     # the `make demo` model and data
    python evaluate.py --model runs/ldm --data AD_NC --out runs/ldm/eval --num_images 500

Trains (once, then cached in MODEL/judge) a small AD/NC classifier on the real training split,
generates --num_images slices per label and writes OUT/metrics.json, OUT/metrics.md, sample grids,
OUT/closest_pairs.png (the generated slices nearest to a training slice, beside it) and
OUT/spectrum.png (the sharpness measure: power spectra of generated, real and VAE-reconstructed
slices at the native size). A second network of the judge's kind, cached in MODEL/judge_level,
predicts each slice's level: its error on real test slices and, for a level-conditioned model, on
slices generated at levels evenly spaced from 0 to 1, and recall per level third.

Under `accelerate launch --num_processes P evaluate.py ...` the sampling, the judge's features and
the memorisation search are split across the P processes and gathered; the main process writes.
"""

import numpy as np
import torch
from accelerate import Accelerator

from pipelines.cli import check_image_count, model_script_parser, sampling_overrides, seed_arg
from pipelines.config import check_positive
from pipelines.distributed import sharded
from pipelines.errors import UserError, cli_entry
from pipelines.evaluation import evaluate_generator
from pipelines.sampling import (
    generate,
    load_pipeline,
    resolve_device,
    sampling_settings,
    saved_config,
    takes_levels,
)
from pipelines.slices import to_pixels, to_unit_range
from pipelines.vae.trainer import reconstruct


@cli_entry
def main(argv=None):
    parser = model_script_parser(__doc__, "MODEL/eval", data=True)
    parser.add_argument("--num_images", type=int, default=None, help="generated per label")
    seed_arg(parser, 0)
    parser.add_argument("--inception_weights", default=None,
                        help="local torch-fidelity Inception weights for ImageNet FID (optional)")
    args = parser.parse_args(argv)
    cfg = saved_config(args.model)
    num_images = cfg.eval.num_images if args.num_images is None else args.num_images
    check_positive(num_images=num_images)
    if num_images < 2:
        raise UserError("--num_images must be at least 2 (diversity needs pairs)")
    check_image_count("--num_images", num_images, low=2)
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device if args.device == "auto" else resolve_device(args.device)
    pipe = load_pipeline(args.model, str(device))
    settings = sampling_settings(pipe, **sampling_overrides(args))

    def sample_fn(label, n, positions=None):
        def share(index):  # this process's images, seeded as in the whole set
            levels = None if positions is None else np.asarray(positions)[index.numpy()]
            images = generate(pipe, label, len(index), seed=args.seed,
                              batch_size=cfg.sample.batch_size, settings=settings,
                              native_size=False, positions=levels, first=int(index[0]),
                              progress=accelerator.is_main_process)
            return torch.from_numpy(images)[:, None]

        return sharded(share, torch.arange(n), accelerator)

    reconstruct_fn = None
    if hasattr(pipe, "vae"):  # the VAE round trip: the sharpness a latent model can reach

        def reconstruct_fn(pixels):
            return to_pixels(reconstruct(pipe.vae, to_unit_range(pixels)))

    out = args.out or f"{args.model}/eval"
    metrics = evaluate_generator(sample_fn, args.data, cfg.data.resolution, cfg.eval,
                                 out, num_images, judge_dir=f"{args.model}/judge", seed=args.seed,
                                 inception_weights=args.inception_weights, sampling=settings,
                                 skip_corrupt=cfg.data.skip_corrupt if args.skip_corrupt is None
                                 else args.skip_corrupt,
                                 reconstruct_fn=reconstruct_fn,
                                 level_conditioned=takes_levels(pipe),
                                 about={"model": str(args.model)}, accelerator=accelerator)
    if metrics is None:  # not the main process
        return
    metrics_md = open(f"{out}/metrics.md").read()
    print(metrics_md)
    print(f"wrote {out}/metrics.json ({metrics['seconds']['total']} s)")


if __name__ == "__main__":
    main()
