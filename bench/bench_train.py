"""Training-step throughput on this machine, for the demo config's VAE, UNet and StyleGAN2.

    python bench/bench_train.py [--config configs/demo.yaml] [--steps 8]
    python bench/bench_train.py --stylegan2_only --widths 4096/256,2048/128,1024/256

Measures img/s (median over --steps timed steps after 2 warm-up steps) for:
  - the VAE training step, fp32 vs bf16 autocast;
  - the UNet step on cached latents (bf16 and fp32) vs the naive path that runs the VAE encoder
    on every batch (bf16), the ratio the latent cache buys;
  - the UNet step's achieved GFLOP/s (torch.utils.flop_counter) vs the machine's bf16 peak;
  - the weight update after each step: AdamW looped vs fused, EMA looped vs foreach;
  - with --compile, the UNet step under torch.compile: compile time, img/s and the number of
    steps after which compiling pays for itself;
  - the StyleGAN2 step (G + D, lazy R1 and path length included: mean over 16 steps) for each
    channel_base/channel_max in --widths.
"""

import argparse
import statistics
import time
from functools import partial

import torch

from pipelines.config import load_config
from pipelines.ldm.objective import diffusion_loss, training_scheduler
from pipelines.ldm.unet import build_unet
from pipelines.stylegan2.objective import StyleGAN2TrainingModel
from pipelines.stylegan2.trainer import build_stylegan2
from pipelines.training import count_parameters, cpu_has_bf16
from pipelines.vae.model import build_vae, vae_downsample_factor
from pipelines.vae.objective import VAETrainingModel

BF16_PEAK_GFLOPS = 370.0  # measured matmul peak of the dev machines (../shared/REFERENCES.md)


def timed(step, steps: int, batch: int, bf16: bool) -> float:
    """img/s of forward (``step()`` returns the loss) + backward, median of ``steps``."""
    def forward_backward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step()
        loss.backward()
    return batch / (_median_ms(forward_backward, steps) / 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where emulated")
    parser.add_argument("--widths", default=None,
                        help="StyleGAN2 channel_base/channel_max pairs (default: the config's)")
    parser.add_argument("--stylegan2_only", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time the UNet step under torch.compile (minutes on 2 cores)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    torch.manual_seed(0)
    res = cfg.data.resolution
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {args.config}")
    bench_stylegan2(cfg, args.widths)
    if args.stylegan2_only:
        return
    precisions = (False, True) if cpu_has_bf16() or args.bf16 else (False,)
    if len(precisions) == 1:
        print("this CPU has no native bf16 (emulated, ~50x slower): bf16 runs skipped "
              "(--bf16 forces them)")

    vae = build_vae(cfg.vae, res)
    model = VAETrainingModel(vae, None, cfg.vae)
    vb = cfg.vae.train_batch_size
    images = torch.rand(vb, 1, res, res) * 2 - 1
    for bf16 in precisions:
        speed = timed(lambda: model(images, 0)[0], args.steps, vb, bf16)
        print(f"VAE step  {'bf16' if bf16 else 'fp32'}: {speed:7.1f} img/s (batch {vb}, {res} px)")

    f = vae_downsample_factor(vae)
    unet = build_unet(cfg.unet, cfg.vae.latent_channels, res // f)
    sched = training_scheduler(cfg.unet)
    ub = cfg.unet.train_batch_size
    latents = torch.randn(ub, cfg.vae.latent_channels, res // f, res // f)
    labels = torch.randint(0, 3, (ub,))
    levels = torch.rand(ub) if cfg.unet.level_conditioning else None  # the demo's level UNet
    pixels = torch.rand(ub, 1, res, res) * 2 - 1
    vae.requires_grad_(False)

    def cached():
        return diffusion_loss(unet, sched, latents, labels, cfg.unet.snr_gamma,
                              slice_positions=levels).mean()

    def naive():
        with torch.no_grad():
            z = vae.encode(pixels).latent_dist.sample()
        return diffusion_loss(unet, sched, z, labels, cfg.unet.snr_gamma,
                              slice_positions=levels).mean()

    results = {}
    runs = [("cached", cached), ("naive (VAE encode per step)", naive)]
    for name, fn in runs:
        for bf16 in precisions:
            key = f"{name} {'bf16' if bf16 else 'fp32'}"
            results[key] = timed(fn, args.steps, ub, bf16)
            print(f"UNet step {key:34s}: {results[key]:7.1f} img/s (batch {ub})")
    best = "bf16" if True in precisions else "fp32"
    print(f"latent cache ({best}) vs naive fp32: "
          f"{results[f'cached {best}'] / results['naive (VAE encode per step) fp32']:.2f}x")
    speed = results[f"cached {best}"]

    flops = step_flops(cached)
    achieved = flops / ub * speed / 1e9
    a = torch.randn(1024, 1024)
    matmul = statistics.median(_matmul_seconds(a) for _ in range(5))
    peak = 2 * 1024**3 / matmul / 1e9
    print(f"UNet step: {flops / ub / 1e9:.2f} GFLOP per image (fwd+bwd); achieved "
          f"{achieved:.0f} GFLOP/s = {achieved / peak:.0%} of this machine's fp32 1024^2 matmul "
          f"({peak:.0f} GFLOP/s; the bf16 peak of AVX512-BF16 machines is ~{BF16_PEAK_GFLOPS:.0f})")
    bench_update(unet, speed / ub)
    if args.compile:
        bench_compile(unet, sched, latents, labels, args.steps, speed)


def bench_update(unet, steps_per_s: float) -> None:
    """The per-step weight update: AdamW's Python loop over tensors vs its fused kernel, and EMA.

    On CPU torch defaults AdamW to a loop over every parameter tensor; the trainers ask for the
    fused kernel (pipelines.training.prepare_run) and a foreach EMA.
    """
    from diffusers.training_utils import EMAModel

    params = list(unet.parameters())
    step_ms = 1000 / steps_per_s
    adamw = (("AdamW, loop (torch's CPU default)", {}), ("AdamW, fused", {"fused": True}))
    for name, kwargs in adamw:
        opt = torch.optim.AdamW(params, lr=1e-12, weight_decay=1e-2, **kwargs)
        ms = _median_ms(opt.step)
        print(f"update {name:34s}: {ms:6.1f} ms/step ({ms / step_ms:.0%} of a fwd+bwd step)")
    for foreach in (False, True):
        ema = EMAModel(params, decay=0.999, foreach=foreach)
        ms = _median_ms(partial(ema.step, params))
        print(f"update EMA, {'foreach' if foreach else 'loop':28s}: {ms:6.1f} ms/step")


def step_flops(loss_fn) -> int:
    """FLOPs of ``loss_fn().backward()`` (torch.utils.flop_counter).

    Attention runs as plain matmuls here, so it is counted on every device: the counter's table
    has CUDA's fused attention kernels but not the CPU's, which it would count as zero.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        loss_fn().backward()
    return counter.get_total_flops()


def _median_ms(fn, steps: int = 12) -> float:
    """Median wall time of ``fn()`` in ms over ``steps`` calls, after 2 warm-up calls."""
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        fn()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_compile(unet, sched, latents, labels, steps: int, eager_speed: float) -> None:
    """torch.compile trades a one-off compilation for faster steps: when does it pay?"""
    compiled = torch.compile(unet)
    batch = latents.shape[0]

    def step():
        return diffusion_loss(compiled, sched, latents, labels, 5.0).mean()

    t0 = time.perf_counter()
    step().backward()  # the first call compiles
    compile_s = time.perf_counter() - t0
    speed = timed(step, steps, batch, bf16=False)
    saved_per_step = batch / eager_speed - batch / speed
    even = f"{compile_s / saved_per_step:.0f} steps" if saved_per_step > 0 else "never"
    print(f"UNet step torch.compile fp32: first step {compile_s:.0f} s (compilation), then "
          f"{speed:.1f} img/s = {speed / eager_speed:.2f}x eager; pays for itself after {even}")


def bench_stylegan2(cfg, widths: str | None, steps: int = 16) -> None:
    """img/s of the StyleGAN2 training step, averaged over one cycle of the lazy regularisers."""
    scfg = cfg.stylegan2
    pairs = widths or f"{scfg.channel_base}/{scfg.channel_max}"
    batch = scfg.train_batch_size
    res = cfg.data.resolution
    for pair in pairs.split(","):
        scfg.channel_base, scfg.channel_max = map(int, pair.split("/"))
        gen, disc = build_stylegan2(cfg)
        model = StyleGAN2TrainingModel(gen, disc, scfg)
        opt = torch.optim.Adam(model.parameters(), scfg.learning_rate,
                               betas=(scfg.adam_beta1, scfg.adam_beta2))
        batch_data = (torch.rand(batch, 1, res, res) * 2 - 1, torch.randint(0, 2, (batch,)))
        model(batch_data, 1)[0].backward()  # warm-up
        t0 = time.perf_counter()
        for step in range(steps):
            loss, _ = model(batch_data, step)
            loss.backward()
            opt.step()
            opt.zero_grad()
        speed = batch * steps / (time.perf_counter() - t0)
        print(f"StyleGAN2 step {pair:>9s}: {speed:7.1f} img/s (batch {batch}, {res} px; "
              f"G {count_parameters(gen) / 1e6:.2f}M, D {count_parameters(disc) / 1e6:.2f}M)")


def _matmul_seconds(a: torch.Tensor) -> float:
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    return (time.perf_counter() - t0) / 10


if __name__ == "__main__":
    main()
