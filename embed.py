"""Draw real (and generated) AD/NC slices as a 2-D UMAP or t-SNE map, with numbers that explain it.

    python embed.py                                    # the `make demo` model, its test split
    python embed.py --model runs/ldm --data AD_NC --with_generated 100 --space judge --method tsne

Writes OUT/embedding.png (coloured by label; generated slices as triangles), embedding_levels.png
(the same map, real slices coloured by slice level), embedding.csv (x, y, label, source, file),
embedding.json (how often a slice's nearest is its own patient's; k-NN label accuracy vs chance,
silhouette, generated slices' nearest-real label agreement against the real slices' own, each
real slice's patient left out; in the feature space and in the map) and embedding.md (the
pictures, a table and an interpretation derived from the numbers). Spaces: latent = the VAE's
scaled posterior means; judge = features of the AD/NC classifier trained on the train split
(cached in MODEL/judge). --with_generated samples with the model's saved sampler, steps and
guidance unless --scheduler, --num_inference_steps or --guidance_scale say otherwise.
"""

from pipelines.cli import check_image_count, model_script_parser, sampling_overrides, seed_arg
from pipelines.embedding import METHODS, SPACES, run_embedding
from pipelines.errors import cli_entry


@cli_entry
def main(argv=None):
    parser = model_script_parser(__doc__, "MODEL/embedding", data=True)
    parser.add_argument("--split", default="test", choices=("train", "test"),
                        help="train | test")
    parser.add_argument("--method", default=None,
                        help=f"{' | '.join(METHODS)} (default: the model config's "
                             "eval.embed_method)")
    parser.add_argument("--space", default="latent", help=" | ".join(SPACES))
    parser.add_argument("--with_generated", type=int, default=0,
                        help="also generate this many slices per label and place them on the map")
    parser.add_argument("--max_images", type=int, default=None,
                        help="cap on real slices, every k-th file kept (default: the model "
                             "config's eval.max_real_images)")
    seed_arg(parser, 0, help="seeds the map and the sampling")
    args = parser.parse_args(argv)
    check_image_count("--with_generated", args.with_generated, low=0)
    out = args.out or f"{args.model}/embedding"
    record = run_embedding(args.model, args.data, out, split=args.split, method=args.method,
                           space=args.space, with_generated=args.with_generated,
                           max_images=args.max_images, seed=args.seed, device=args.device,
                           sampling=sampling_overrides(args), skip_corrupt=args.skip_corrupt)
    counts = record["counts"]
    print(f"{record['method']} of {record['space']} features: {counts['real']['total']} real + "
          f"{counts['generated']['total']} generated; "
          + (f"k-NN accuracy {record['knn_accuracy']['feature']:.3f} (chance "
             f"{record['chance']:.3f}); " if "knn_accuracy" in record else
             f"label measures {record['label_measures_not_defined']}; ") +
          f"wrote {out}/embedding.{{png,csv,json,md}}, embedding_levels.png")


if __name__ == "__main__":
    main()
