"""Counterfactuals: what this brain slice would look like with AD, or without it.

    python edit.py --image data/phantom/test/NC/123456_70.jpeg --to AD --out runs/edit
    python edit.py --data data/phantom --split test --num_images 8 --to flip --method sdedit

Each slice is encoded with the model's VAE and noised to --strength; by default (--method
posterior) the change is the difference of the denoiser's predictions of the clean slice under the
target and the source label, averaged over --draws noise draws spread over four noise levels up to
--strength (no sampling); --method inversion
(DDIM inversion under the slice's own label) and sdedit (added noise) instead denoise it under the
target label with classifier-free guidance. The change, made at the model's resolution, reaches
256x240 along the source's own edges (a guided filter, then gathered onto the edges within each
model pixel; --refine guided stops after the filter, --refine none resizes only).
Writes per slice the counterfactual (8-bit PNG at 256x240, named after its source) and a signed
difference map over the source (one scale for the run), panel.png (source | counterfactual |
difference) and edit.json (the judge's probability of the target label before and after, SSIM to
the source, mean absolute change inside the brain). A slice's label is its folder's (AD/NC) or
--label. A level-conditioned model keeps each slice's level: from the slice numbers of the
patient's files beside it, or --slice_position. --strength and --guidance_scale default to the
method's values measured against the truth (posterior: noise levels up to 0.75, guidance 1,
i.e. the plain difference; inversion and sdedit: 0.4 and 2), steps to the model's saved ones;
the judge is the one evaluate.py trains on --data and caches in MODEL/judge. --evaluate scores edits
against the stand-in set's paired truth:

    python edit.py --model outputs/demo/model --data data/phantom --evaluate [--num_images 12]
"""

from pipelines.cli import (
    check_image_count,
    model_script_parser,
    parse_slice_positions,
    seed_arg,
)
from pipelines.config import check_positive
from pipelines.counterfactual import (
    DEFAULT_METHOD,
    check_edit_args,
    check_method,
    edit_to_folder,
    read_source,
    sources_from_data,
)
from pipelines.counterfactual_eval import evaluate_edits, read_pairs
from pipelines.data import load_split
from pipelines.errors import UserError, cli_entry
from pipelines.judge import judge_for
from pipelines.ldm.pipeline_adni import (
    CHANGE_FROM,
    DEFAULT_DRAWS,
    DEFAULT_REFINE,
    EDIT_DEFAULTS,
    EDIT_METHODS,
    REFINE,
)
from pipelines.sampling import check_level_model, load_pipeline, sampling_settings, saved_config


@cli_entry
def main(argv=None):
    parser = model_script_parser(__doc__, "MODEL/edit", data=True)
    parser.add_argument("--image", nargs="+", help="slice file(s) to edit (else --data's split)")
    parser.add_argument("--label", default=None, help="the --image slices' label (default: "
                        "their folder's name, AD or NC)")
    parser.add_argument("--slice_position", default=None, metavar="P",
                        help="a level-conditioned model: the --image slices' level in [0, 1] "
                             "(default: from the patient's other slices beside each file)")
    parser.add_argument("--split", default="test", choices=("train", "test"),
                        help="with --data: the split to edit")
    parser.add_argument("--num_images", type=int, default=None, help="with --data: slices "
                        "spread over the split (default 8); with --evaluate: per direction, "
                        "spread over the pairs (default: all)")
    parser.add_argument("--to", default="flip", help="AD | NC | flip (each to the other label)")
    parser.add_argument("--strength", type=float, default=None,
                        help="share of the noise schedule the edit spans (posterior: the "
                             "highest of its noise levels), in (0, 1] (default: "
                             "the method's, " + ", ".join(f"{m} {d['strength']}" for m, d in
                                                         EDIT_DEFAULTS.items()) + ")")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=EDIT_METHODS)
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                        help="--method posterior: noise draws averaged")
    parser.add_argument("--change_from", default="null_edit", choices=CHANGE_FROM,
                        help="the source plus the decoded edit minus: the same path under the "
                             "source's label (null_edit), or the decoded source (reconstruction);"
                             " or none: the decoded edit itself")
    parser.add_argument("--refine", default=DEFAULT_REFINE, choices=REFINE,
                        help="bring the change to the native size through a guided filter with "
                             "the source as guide, then gathered on the source's edges within "
                             "each model pixel (edges), the guided filter only (guided), or "
                             "resized only (none)")
    seed_arg(parser, 0, help="SDEdit's noise")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--evaluate", action="store_true", help="instead: score edits of both "
                        "directions, the other method and the mean-difference baseline against "
                        "--data's paired truth (tools.phantom --counterfactuals); writes "
                        "OUT/truth.json, truth.md, truth_panel.png")
    args = parser.parse_args(argv)
    if args.scheduler is not None:
        raise UserError("--scheduler does not apply to edits: they always use DDIM (and its "
                        "inverse) built from the model's noise schedule")
    if args.strength is None:
        args.strength = EDIT_DEFAULTS[args.method]["strength"]
    check_edit_args(args.strength, args.to)
    check_method(args.method, args.change_from, args.draws)
    cfg = saved_config(args.model)
    batch_size = cfg.sample.batch_size if args.batch_size is None else args.batch_size
    check_positive(batch_size=batch_size)
    if args.num_images is not None:
        check_positive(num_images=args.num_images)
        check_image_count("--num_images", args.num_images)
    if args.evaluate:
        pairs = read_pairs(args.data, args.num_images)
    elif args.image:
        level = None if args.slice_position is None else \
            parse_slice_positions([args.slice_position])[0]
        sources = [read_source(path, args.label, level) for path in args.image]
    else:
        sources = sources_from_data(args.data, args.split, args.num_images or 8)
    pipe = load_pipeline(args.model, args.device)
    if not pipe.sampling_settings():
        raise UserError(f"{args.model} is a {type(pipe).__name__}, which has no encoder to edit "
                        "a slice with; pass a latent diffusion model (train_unet.py's "
                        "OUTPUT_DIR)")
    if args.slice_position is not None:
        check_level_model(pipe, args.model)
    settings = sampling_settings(pipe, num_inference_steps=args.num_inference_steps,
                                 guidance_scale=args.guidance_scale)
    settings.pop("scheduler")
    settings.pop("guidance_interval", None)  # edits guide every step of their short path
    if args.guidance_scale is None and settings:
        settings["guidance_scale"] = EDIT_DEFAULTS[args.method]["guidance_scale"]
    skip = cfg.data.skip_corrupt if args.skip_corrupt is None else args.skip_corrupt
    train = load_split(args.data, "train", cfg.data.resolution, skip, progress=False)
    judge, _ = judge_for(train, cfg.eval, f"{args.model}/judge")
    if args.evaluate:
        out = args.out or f"{args.model}/edit_truth"
        evaluate_edits(pipe, judge, pairs, args.data, out, settings=settings,
                       strength=args.strength, method=args.method, seed=args.seed,
                       batch_size=batch_size, change_from=args.change_from,
                       refine=args.refine, num_draws=args.draws,
                       record={"model": str(args.model)})
        print(open(f"{out}/truth.md").read())
        return
    out = args.out or f"{args.model}/edit"
    record = edit_to_folder(pipe, judge, sources, args.to, out, settings=settings,
                            strength=args.strength, method=args.method, seed=args.seed,
                            batch_size=batch_size, change_from=args.change_from,
                            refine=args.refine, num_draws=args.draws,
                            record={"model": str(args.model)})
    for note in record["converted"]:
        print(f"converted {note['file']}: {note['reason']}")
    summary = record["summary"]
    print(f"{summary['slices']} counterfactuals in {out} ({record['seconds']} s): flip rate "
          f"{summary['flip_rate']}, p(target) {summary['mean_p_target_before']} -> "
          f"{summary['mean_p_target_after']}, SSIM to source {summary['mean_ssim_to_source']}; "
          f"panel {out}/panel.png")


if __name__ == "__main__":
    main()
