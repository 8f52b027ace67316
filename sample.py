"""Generate AD or NC brain slices from a trained model (latent diffusion or the StyleGAN2 baseline).

    python sample.py --label AD                       # the `make demo` model, 16 images
    python sample.py --model runs/ldm --label all --num_images 64 --scheduler ddim --seed 3
    python sample.py --model runs/ldm_level --label AD --slice_position 0.3
    python sample.py --model runs/ldm_level --label all --slice_position all 7  # a column per level
    python sample.py --model runs/ldm_stack --label AD --subjects 4 --stack 20 --data data/AD_NC

Writes one 8-bit greyscale PNG per image at the native 256x240 slice size, a grid per label and
sample.json (model, labels, seed, steps, guidance, scheduler). The same seed gives the same images.
The sampler, steps and guidance are the ones saved with the model unless a flag says otherwise
(a StyleGAN2 model has none of the three). --slice_position (a level-conditioned model only):
the level in the patient's stack, 0 = lowest slice, 1 = highest; 'all K' gives K levels evenly.
--subjects N (a stack-conditioned model only): N synthetic subjects per label, each a stack of
--stack K consecutive slices of one made-up brain, as OUT/<label>/<subject>_<slice>.jpeg, a NIfTI
volume OUT/volumes/<subject>.nii.gz and a reslice picture OUT/reslice_<label>.png (beside a real
patient's from --data), recorded in subjects.json (pipelines/subjects.py).
"""

from pipelines.cli import (
    check_image_count,
    model_script_parser,
    parse_slice_positions,
    sampling_overrides,
    seed_arg,
)
from pipelines.config import check_positive
from pipelines.errors import UserError, cli_entry
from pipelines.sampling import sample_to_folder, saved_config
from pipelines.slices import CLASS_NAMES, parse_label
from pipelines.subjects import subjects_to_folder


@cli_entry
def main(argv=None):
    parser = model_script_parser(__doc__, "MODEL/samples_cli", data=False)
    parser.add_argument("--label", default="all", help=f"{' | '.join(CLASS_NAMES)} | all")
    parser.add_argument("--num_images", type=int, default=None, help="images per label")
    seed_arg(parser, None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--slice_position", nargs="+", default=None, metavar="P | all K",
                        help="level-conditioned models: level in [0, 1] (0 = a patient's lowest "
                             "slice, 1 = its highest), or 'all K' for K evenly spaced levels")
    parser.add_argument("--subjects", type=int, default=None,
                        help="stack-conditioned models: synthetic subjects per label")
    parser.add_argument("--stack", type=int, default=None,
                        help="slices per subject (default: the training patients' count)")
    parser.add_argument("--data", default=None,
                        help="AD_NC folder: a real patient's reslice beside the subjects'")
    args = parser.parse_args(argv)
    if args.subjects is None and (args.stack is not None or args.data is not None):
        raise UserError("--stack and --data go with --subjects N (synthetic subjects); add it "
                        "or leave them out")
    if args.subjects is not None and args.slice_position is not None:
        raise UserError("--slice_position does not go with --subjects (a subject's slices take "
                        "consecutive levels); leave one out")
    positions = parse_slice_positions(args.slice_position)
    defaults = saved_config(args.model).sample
    num_images = defaults.num_images if args.num_images is None else args.num_images
    batch_size = defaults.batch_size if args.batch_size is None else args.batch_size
    check_positive(num_images=num_images, batch_size=batch_size)
    check_image_count("--num_images", num_images)
    if args.label.lower() == "all":
        labels = list(CLASS_NAMES)
    else:
        try:
            labels = [CLASS_NAMES[parse_label(args.label)]]
        except ValueError as err:
            raise UserError(f"{err}, or all") from None
    out = args.out or f"{args.model}/samples_cli"
    if args.subjects is not None:
        check_positive(subjects=args.subjects)
        if args.stack is not None and args.stack < 1:
            raise UserError(f"--stack must be at least 1 slice, got {args.stack}")
        record = subjects_to_folder(args.model, labels, out, subjects=args.subjects,
                                    stack=args.stack, batch_size=batch_size, device=args.device,
                                    seed=defaults.seed if args.seed is None else args.seed,
                                    data=args.data, **sampling_overrides(args))
        for label, info in record["labels"].items():
            print(f"{label}: {len(info['subjects'])} subjects of {record['stack']} slices in "
                  f"{out}/{label}, volumes in {out}/volumes, reslices {out}/{info['reslice']} "
                  f"({info['seconds']} s)")
            if info["measures"]:
                adj = info["measures"]["adjacent"]
                print("  adjacent-slice SSIM: generated {:.3f}, real {:.3f}, independent "
                      "{}".format(adj["generated"]["ssim"], adj["real"]["ssim"],
                                  f"{adj['independent']['ssim']:.3f}" if "independent" in adj
                                  else "n/a (one subject)"))
        return
    record = sample_to_folder(args.model, labels, out, num_images=num_images,
                              seed=defaults.seed if args.seed is None else args.seed,
                              batch_size=batch_size, device=args.device, positions=positions,
                              **sampling_overrides(args))
    for label, info in record["labels"].items():
        print(f"{label}: {info['num_images']} images in {out}/{info['folder']} "
              f"({info['seconds']} s), grid {out}/{info['grid']}")


if __name__ == "__main__":
    main()
