"""Expected time per epoch of a config on a GPU, from counted FLOPs: an estimate, not a timing.

    python bench/estimate_epoch.py --config configs/adni256.yaml [--tflops 300] [--images 21520]

Counts the FLOPs of one training step per image (forward + backward, batch 1, on the CPU with
torch.utils.flop_counter) for the config's VAE (discriminator excluded) and UNet, then divides an
epoch's FLOPs by an assumed achieved rate. The default 300 TFLOP/s is ~30% of an H100's dense
bf16 peak, what convolutional UNets typically reach; pass what your GPU achieves. Until a GPU
run measures the real figure, this is how the configs' "expected time per epoch" is derived.
"""

import argparse

import torch

from bench.bench_train import step_flops
from pipelines.config import load_config
from pipelines.ldm.objective import diffusion_loss, training_scheduler
from pipelines.ldm.unet import build_unet
from pipelines.vae.model import build_vae, vae_downsample_factor
from pipelines.vae.objective import VAETrainingModel


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/adni256.yaml")
    parser.add_argument("--tflops", type=float, default=300.0, help="assumed achieved TFLOP/s")
    parser.add_argument("--images", type=int, default=21520, help="slices per epoch (ADNI train)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    res = cfg.data.resolution
    torch.manual_seed(0)
    vae = build_vae(cfg.vae, res)
    vae_model = VAETrainingModel(vae, None, cfg.vae)
    image = torch.rand(1, 1, res, res) * 2 - 1
    vae_flops = step_flops(lambda: vae_model(image, 0)[0])
    size = res // vae_downsample_factor(vae)
    unet = build_unet(cfg.unet, cfg.vae.latent_channels, size)
    latents = torch.randn(1, cfg.vae.latent_channels, size, size)
    levels = torch.tensor([0.5]) if cfg.unet.level_conditioning else None
    unet_flops = step_flops(lambda: diffusion_loss(unet, training_scheduler(cfg.unet), latents,
                                                   torch.tensor([1]), cfg.unet.snr_gamma,
                                                   slice_positions=levels).mean())
    print(f"config {args.config}: {res} px, latents {cfg.vae.latent_channels}x{size}x{size}; "
          f"assumed {args.tflops:.0f} TFLOP/s achieved, {args.images} images per epoch")
    for name, flops in (("VAE", vae_flops), ("UNet", unet_flops)):
        seconds = flops * args.images / (args.tflops * 1e12)
        print(f"{name:4s} step: {flops / 1e9:7.1f} GFLOP per image (fwd+bwd) -> "
              f"{seconds / 60:5.1f} min per epoch (estimate)")


if __name__ == "__main__":
    main()
