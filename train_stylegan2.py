"""Train the label-conditioned StyleGAN2 baseline (the seed's model family) and save its pipeline.

    python train_stylegan2.py --config configs/demo.yaml --data data/phantom \
        --output_dir outputs/stylegan2
    accelerate launch --num_processes 2 train_stylegan2.py --config configs/adni256.yaml \
        --data AD_NC --output_dir runs/stylegan2

Any config key can be overridden, e.g. --max_train_steps 4000 --stylegan2.r1_gamma 0.1.
Writes OUTPUT_DIR/{model_index.json,generator,README.md,metrics.json,samples,logs}; sample.py,
embed.py --space judge and evaluate.py take OUTPUT_DIR as --model.
"""

from pipelines.cli import add_run_args, parse_with_config, script_parser
from pipelines.errors import cli_entry
from pipelines.stylegan2.trainer import train_stylegan2


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__)
    add_run_args(parser, "outputs/stylegan2")
    args, cfg = parse_with_config(parser, "stylegan2", argv)
    train_stylegan2(cfg, args.data, args.output_dir, args.resume_from_checkpoint, args.overwrite)


if __name__ == "__main__":
    main()
