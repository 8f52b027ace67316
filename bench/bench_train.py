"""Training-step throughput on this machine, for the demo config's VAE and UNet.

    python bench/bench_train.py [--config configs/demo.yaml] [--steps 8]

Measures img/s (median over --steps timed steps after 2 warm-up steps) for:
  - the VAE training step, fp32 vs bf16 autocast;
  - the UNet step on cached latents (bf16 and fp32) vs the naive path that runs the VAE encoder
    on every batch (bf16), the ratio the latent cache buys;
  - the UNet step's achieved GFLOP/s (torch.utils.flop_counter) vs the machine's bf16 peak.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_config  # noqa: E402
from pipelines.diffusion import training_scheduler  # noqa: E402
from pipelines.losses import VAETrainingModel, diffusion_loss  # noqa: E402
from pipelines.models import build_unet, build_vae, vae_downsample_factor  # noqa: E402

BF16_PEAK_GFLOPS = 370.0  # measured matmul peak of the dev machines (../shared/REFERENCES.md)


def timed(step, steps: int, batch: int, bf16: bool) -> float:
    for i in range(steps + 2):
        if i == 2:
            times = []
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step()
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    cfg = load_config(args.config)
    torch.manual_seed(0)
    res = cfg.data.resolution
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {args.config}")

    vae = build_vae(cfg.vae, res)
    model = VAETrainingModel(vae, None, cfg.vae)
    vb = cfg.vae.train_batch_size
    images = torch.rand(vb, 1, res, res) * 2 - 1
    for bf16 in (False, True):
        speed = timed(lambda: model(images, 0)[0], args.steps, vb, bf16)
        print(f"VAE step  {'bf16' if bf16 else 'fp32'}: {speed:7.1f} img/s (batch {vb}, {res} px)")

    f = vae_downsample_factor(vae)
    unet = build_unet(cfg.unet, cfg.vae.latent_channels, res // f)
    sched = training_scheduler(cfg.unet)
    ub = cfg.unet.train_batch_size
    latents = torch.randn(ub, cfg.vae.latent_channels, res // f, res // f)
    labels = torch.randint(0, 3, (ub,))
    pixels = torch.rand(ub, 1, res, res) * 2 - 1
    vae.requires_grad_(False)

    def cached():
        return diffusion_loss(unet, sched, latents, labels, 5.0).mean()

    def naive():
        with torch.no_grad():
            z = vae.encode(pixels).latent_dist.sample()
        return diffusion_loss(unet, sched, z, labels, 5.0).mean()

    results = {}
    for name, fn, bf16 in (("cached bf16", cached, True), ("cached fp32", cached, False),
                           ("naive bf16 (VAE encode per step)", naive, True),
                           ("naive fp32 (VAE encode per step)", naive, False)):
        results[name] = timed(fn, args.steps, ub, bf16)
        print(f"UNet step {name:34s}: {results[name]:7.1f} img/s (batch {ub})")
    print(f"latent cache + bf16 vs naive fp32: "
          f"{results['cached bf16'] / results['naive fp32 (VAE encode per step)']:.2f}x")

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        cached().backward()
    flops = counter.get_total_flops()
    achieved = flops / ub * results["cached bf16"] / 1e9
    print(f"UNet step: {flops / ub / 1e9:.2f} GFLOP per image (fwd+bwd); achieved "
          f"{achieved:.0f} GFLOP/s = {achieved / BF16_PEAK_GFLOPS:.0%} of the "
          f"{BF16_PEAK_GFLOPS:.0f} GFLOP/s bf16 matmul peak")


if __name__ == "__main__":
    main()
