"""Measure a trained model: image quality, label faithfulness, diversity, novelty, usefulness.

    python evaluate.py                                     # the `make demo` model and data
    python evaluate.py --model runs/ldm --data AD_NC --out runs/ldm/eval --num_images 500

Trains (once, then cached in MODEL/judge) a small AD/NC classifier on the real training split,
generates --num_images slices per label and writes OUT/metrics.json, OUT/metrics.md, sample grids
and OUT/closest_pairs.png (the generated slices nearest to a training slice, beside it).
"""

from pipelines.cli import DEFAULT_DATA, DEFAULT_MODEL, script_parser
from pipelines.config import check_positive
from pipelines.data import to_pixels
from pipelines.errors import UserError, cli_entry
from pipelines.evaluation import evaluate_generator
from pipelines.sampling import generate, load_pipeline, saved_config, use_scheduler


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="AD_NC folder")
    parser.add_argument("--out", default=None, help="output folder (default MODEL/eval)")
    parser.add_argument("--num_images", type=int, default=None, help="generated per label")
    parser.add_argument("--guidance_scale", type=float, default=None)
    parser.add_argument("--num_inference_steps", type=int, default=None)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--inception_weights", default=None,
                        help="local torch-fidelity Inception weights for ImageNet FID (optional)")
    args = parser.parse_args(argv)
    cfg = saved_config(args.model)
    num_images = cfg.eval.num_images if args.num_images is None else args.num_images
    steps = (cfg.sample.num_inference_steps if args.num_inference_steps is None
             else args.num_inference_steps)
    guidance = cfg.sample.guidance_scale if args.guidance_scale is None else args.guidance_scale
    check_positive(num_images=num_images, num_inference_steps=steps)
    if guidance < 1:
        raise UserError(f"--guidance_scale must be >= 1 (1 = no guidance), got {guidance}")
    if num_images < 2:
        raise UserError("--num_images must be at least 2 (diversity needs pairs)")
    pipe = load_pipeline(args.model, args.device)
    use_scheduler(pipe, args.scheduler)

    def sample_fn(label, n):
        images = generate(pipe, label, n, seed=args.seed, batch_size=cfg.sample.batch_size,
                          guidance_scale=guidance, num_inference_steps=steps,
                          output_type="square")
        return to_pixels(images)

    out = args.out or f"{args.model}/eval"
    metrics = evaluate_generator(sample_fn, args.data, cfg.data.resolution, cfg.eval,
                                 out, num_images, judge_dir=f"{args.model}/judge", seed=args.seed,
                                 inception_weights=args.inception_weights)
    metrics_md = open(f"{out}/metrics.md").read()
    print(metrics_md)
    print(f"wrote {out}/metrics.json ({metrics['seconds']['total']} s)")


if __name__ == "__main__":
    main()
