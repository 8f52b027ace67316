"""Train the class-conditioned UNet on the frozen VAE's latents and save the diffusers pipeline.

    python train_unet.py --config configs/demo.yaml --vae outputs/demo/vae_run/vae \
        --data data/phantom --output_dir outputs/demo/model
    accelerate launch --num_processes 2 train_unet.py --config configs/adni256.yaml \
        --vae runs/vae/vae --data AD_NC --output_dir runs/ldm

Any config key can be overridden, e.g. --max_train_steps 4000 --unet.learning_rate 2e-4.
Writes OUTPUT_DIR/{model_index.json,vae,unet,scheduler,README.md,metrics.json,samples,logs}.
"""

from pipelines.cli import add_run_args, parse_with_config, script_parser
from pipelines.errors import cli_entry
from pipelines.ldm.trainer import train_unet


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument("--vae", required=True, help="the trained VAE folder (OUT/vae)")
    add_run_args(parser, "outputs/ldm")
    parser.add_argument("--cache_dir", default=None,
                        help="latent cache folder (default OUTPUT_DIR/latent_cache)")
    args, cfg = parse_with_config(parser, "unet", argv)
    train_unet(cfg, args.vae, args.data, args.output_dir, args.resume_from_checkpoint,
               args.cache_dir)


if __name__ == "__main__":
    main()
