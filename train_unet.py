"""Train the class-conditioned UNet on the frozen VAE's latents and save the diffusers pipeline.

    accelerate launch train_unet.py          # after `make demo`: its data, VAE and config
    python train_unet.py --config configs/demo.yaml --vae outputs/demo/vae_run/vae \
        --data data/phantom --output_dir outputs/unet
    accelerate launch --num_processes 2 train_unet.py --config configs/adni256.yaml \
        --vae runs/vae/vae --data AD_NC --output_dir runs/ldm

Any config key can be overridden, e.g. --max_train_steps 4000 --unet.learning_rate 2e-4.
Writes OUTPUT_DIR/{model_index.json,vae,unet,scheduler,README.md,metrics.json,samples,logs}.
"""

from pathlib import Path

from pipelines.cli import DEFAULT_VAE, add_run_args, parse_with_config, script_parser
from pipelines.errors import UserError, cli_entry
from pipelines.ldm.trainer import train_unet


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument("--vae", default=str(DEFAULT_VAE),
                        help="the trained VAE folder (train_vae.py's OUT/vae; default: the "
                             "demo's)")
    add_run_args(parser, "outputs/unet")
    parser.add_argument("--cache_dir", default=None,
                        help="latent cache folder (default OUTPUT_DIR/latent_cache)")
    args, cfg = parse_with_config(parser, "unet", argv)
    if not Path(args.vae).exists():
        raise UserError(f"no VAE at {args.vae}: train_unet.py denoises a trained VAE's latents; "
                        "run `make demo` (or train_vae.py) first, or pass --vae OUT/vae")
    train_unet(cfg, args.vae, args.data, args.output_dir, args.resume_from_checkpoint,
               args.cache_dir, args.overwrite)


if __name__ == "__main__":
    main()
