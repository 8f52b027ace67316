"""Train (or fine-tune) the greyscale AutoencoderKL on AD_NC slices.

    python train_vae.py --config configs/demo.yaml --data data/phantom --output_dir outputs/vae
    accelerate launch train_vae.py --config configs/adni256.yaml --data AD_NC --output_dir runs/vae
    python train_vae.py ... --pretrained path/to/local/sd-vae   # fine-tune, RGB adapted to grey

Any config key can be overridden, e.g. --resolution 64 --max_train_steps 2000 --vae.kl_weight 1e-6.
Writes OUTPUT_DIR/vae (diffusers AutoencoderKL), OUTPUT_DIR/metrics.json, samples/, logs/.
"""

from pipelines.cli import add_run_args, parse_with_config, script_parser
from pipelines.errors import cli_entry
from pipelines.vae.trainer import train_vae


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__)
    add_run_args(parser, "outputs/vae")
    parser.add_argument("--pretrained", default=None,
                        help="local diffusers AutoencoderKL folder to fine-tune (RGB is adapted)")
    args, cfg = parse_with_config(parser, "vae", argv)
    train_vae(cfg, args.data, args.output_dir, args.pretrained, args.resume_from_checkpoint,
              args.overwrite)


if __name__ == "__main__":
    main()
