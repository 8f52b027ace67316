"""Cost of the two ways to condition the UNet on the label, at the demo config's widths.

    python bench/bench_conditioning.py [--config configs/demo.yaml] [--steps 4]

class_embed: UNet2DModel(num_class_embeds=3), the label embedding added to the time embedding.
cross_attention: UNet2DConditionModel with the label as one context token (CompVis-style), the
same widths and attention levels (cross-attention blocks where the class-embed UNet has
self-attention, as diffusers' conditional blocks pair the two). Both from models.build_unet, as
`unet.conditioning` builds them for training. Prints parameters, GFLOP per
image and training img/s (median of --steps, fp32).
"""

import argparse
import statistics
import time

import torch

from bench.bench_train import step_flops
from pipelines.config import load_config
from pipelines.ldm.pipeline_adni import condition_inputs
from pipelines.ldm.unet import build_unet


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    cfg = load_config(args.config)
    ch, size, batch = cfg.vae.latent_channels, cfg.data.resolution // 4, cfg.unet.train_batch_size
    torch.manual_seed(0)
    x, t = torch.randn(batch, ch, size, size), torch.randint(0, 1000, (batch,))
    labels = torch.randint(0, 3, (batch,))
    models = {}
    for conditioning in ("class_embed", "cross_attention"):
        cfg.unet.conditioning = conditioning
        unet = build_unet(cfg.unet, ch, size)
        models[conditioning] = (unet, lambda m: m(x, t, **condition_inputs(m, labels)).sample)
    for name, (model, forward) in models.items():
        flops = step_flops(lambda: forward(model).pow(2).mean())  # noqa: B023 (called here)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            forward(model).pow(2).mean().backward()
            times.append(time.perf_counter() - t0)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:16s} {params:5.1f}M params, {flops / batch / 1e9:.2f} "
              f"GFLOP/img, {batch / statistics.median(times):6.1f} img/s (batch {batch}, fp32)")


if __name__ == "__main__":
    main()
