"""Generate AD or NC brain slices from a trained model (latent diffusion or the StyleGAN2 baseline).

    python sample.py --label AD                       # the `make demo` model, 16 images
    python sample.py --model runs/ldm --label all --num_images 64 --scheduler ddim --seed 3

Writes one 8-bit greyscale PNG per image at the native 256x240 slice size, a grid per label and
sample.json (model, labels, seed, steps, guidance, scheduler). The same seed gives the same images.
Defaults for guidance, steps and scheduler come from the model's saved config (a StyleGAN2 model
has none of the three and ignores them).
"""

from pipelines.cli import DEFAULT_MODEL, script_parser
from pipelines.config import check_positive
from pipelines.data import CLASS_NAMES
from pipelines.errors import UserError, cli_entry
from pipelines.pipeline import SCHEDULERS
from pipelines.sampling import sample_to_folder, saved_config


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder")
    parser.add_argument("--label", default="all", help=f"{' | '.join(CLASS_NAMES)} | all")
    parser.add_argument("--num_images", type=int, default=None, help="images per label")
    parser.add_argument("--guidance_scale", type=float, default=None,
                        help="classifier-free guidance; 1 = no guidance, larger = more typical")
    parser.add_argument("--num_inference_steps", type=int, default=None)
    parser.add_argument("--scheduler", default=None, choices=list(SCHEDULERS))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--out", default=None, help="output folder (default MODEL/samples_cli)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    args = parser.parse_args(argv)
    defaults = saved_config(args.model).sample
    pick = lambda value, default: default if value is None else value  # noqa: E731
    num_images = pick(args.num_images, defaults.num_images)
    steps = pick(args.num_inference_steps, defaults.num_inference_steps)
    batch_size = pick(args.batch_size, defaults.batch_size)
    guidance = pick(args.guidance_scale, defaults.guidance_scale)
    check_positive(num_images=num_images, num_inference_steps=steps, batch_size=batch_size)
    if guidance < 1:
        raise UserError(f"--guidance_scale must be >= 1 (1 means no guidance: the conditional "
                        f"model alone), got {guidance}")
    if args.label.lower() == "all":
        labels = list(CLASS_NAMES)
    elif args.label.upper() in CLASS_NAMES:
        labels = [args.label.upper()]
    else:
        raise UserError(f"unknown label {args.label!r}; use {', '.join(CLASS_NAMES)} or all")
    out = args.out or f"{args.model}/samples_cli"
    record = sample_to_folder(args.model, labels, out, num_images=num_images,
                              seed=pick(args.seed, defaults.seed), batch_size=batch_size,
                              guidance_scale=guidance, num_inference_steps=steps,
                              scheduler=pick(args.scheduler, defaults.scheduler),
                              device=args.device)
    for label, info in record["labels"].items():
        print(f"{label}: {info['num_images']} images in {out}/{info['folder']} "
              f"({info['seconds']} s), grid {out}/{info['grid']}")


if __name__ == "__main__":
    main()
