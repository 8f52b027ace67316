"""What each stage of a config costs on the full AD_NC release on GPUs: a projection from
counted FLOPs and computed memory, not a timing (bench/gpu_check.sh measures).

    python -m bench.project_gpu [--config configs/adni256.yaml] [--tflops 300] [--out DIR]

Per stage (VAE training, the latent cache, UNet training, sampling), on this machine's CPU:

- FLOPs per image: matmuls and convolutions of one step at batch 1 (torch.utils.flop_counter,
  attention as plain matmuls, norms and element-wise work not counted); training forward +
  backward (the VAE with its discriminator for the steps after ``disc_start_step``), the cache
  one encoder pass per slice and per mirror image, sampling the config's steps of the UNet (twice
  the batch where guidance acts: ``guidance_interval``) and one decoder pass.
- Work: the training stages' images as the config writes them for one process (``scale_lr``
  keeps that budget on N GPUs: steps / N), the cache every training slice, sampling 1000 images.
- Time: work x FLOPs / an assumed achieved rate (``--tflops``, default 300 TFLOP/s: ~30% of an
  H100's 989 dense bf16, what convolutional UNets usually reach), on 1 GPU and on 8 (ideal
  scaling: data loading, validation, saves and communication not counted).
- GPU memory per process at the config's batch: weights, gradients, AdamW's two moments and the
  EMA copy in fp32 (16 or 20 bytes per trained parameter), plus the activations saved for the
  backward pass, summed over distinct tensors at batch 1 under bf16 autocast and scaled to the
  batch. The allocator's caching, cuDNN workspaces and the CUDA context (~0.5-1 GiB) come on top,
  so the real peak is higher: the measured figure is gpu_check's ``peak_gpu_memory_gib``.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from pipelines.config import load_config
from pipelines.errors import cli_entry
from pipelines.files import write_json, write_text

FULL_RELEASE_TRAIN = 21520  # slices in AD_NC's train split (30,520 in all)
SAMPLED = 1000  # images per sampling projection
GIB = 2**30


@contextmanager
def saved_activations():
    """Count the bytes of the distinct tensors autograd saves for the backward pass."""
    seen: dict = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
            try:
                key = t.untyped_storage().data_ptr()
                seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
            except (RuntimeError, NotImplementedError):
                pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def train_step_cost(loss_fn, params) -> dict:
    """FLOPs of ``loss_fn().backward()`` and the activation bytes it saves, at batch 1."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    trained = {p.data_ptr() for p in params}
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        with saved_activations() as seen:
            loss = loss_fn()
        loss.backward()
    activations = sum(v for k, v in seen.items() if k not in trained)
    return {"flops": counter.get_total_flops(), "activation_bytes": activations}


def forward_flops(fn) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter, \
            sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", dtype=torch.bfloat16):
        fn()
    return counter.get_total_flops()


def state_bytes(parameters: int, ema: bool) -> int:
    """fp32 weights, gradients and AdamW's two moments (16 B each), and the EMA copy (4 B)."""
    return parameters * (16 + (4 if ema else 0))


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def project(cfg, tflops: float, train_images: int) -> dict:
    from pipelines.ldm.objective import diffusion_loss, training_scheduler
    from pipelines.ldm.pipeline_adni import check_interval, guided_steps, make_scheduler
    from pipelines.ldm.unet import build_unet
    from pipelines.vae.model import PatchDiscriminator, build_vae, vae_downsample_factor
    from pipelines.vae.objective import VAETrainingModel

    res, vcfg, ucfg, scfg = cfg.data.resolution, cfg.vae, cfg.unet, cfg.sample
    torch.manual_seed(0)
    vae = build_vae(vcfg, res)
    disc = PatchDiscriminator(vcfg.disc_channels) if vcfg.disc_weight > 0 else None
    model = VAETrainingModel(vae, disc, vcfg)
    image = torch.rand(1, 1, res, res) * 2 - 1
    vae_params = count(vae) + (count(disc) if disc else 0)
    on = train_step_cost(lambda: model(image, vcfg.disc_start_step)[0], model.parameters())
    off = train_step_cost(lambda: model(image, -1)[0], model.parameters()) if disc else on
    steps = vcfg.max_train_steps
    disc_share = max(0, steps - vcfg.disc_start_step) / steps if disc else 0.0
    vae_flops = disc_share * on["flops"] + (1 - disc_share) * off["flops"]

    factor = vae_downsample_factor(vae)
    size = res // factor
    with torch.no_grad():
        latent = vae.encode(image).latent_dist.mode()
    encode = forward_flops(lambda: vae.encode(image))
    decode = forward_flops(lambda: vae.decode(latent))

    unet = build_unet(ucfg, vcfg.latent_channels, size)
    sched = training_scheduler(ucfg)
    latents = torch.randn(1, vcfg.latent_channels, size, size)
    labels, levels = torch.tensor([1]), torch.tensor([0.5])
    positions = levels if ucfg.level_conditioning else None
    unet_step = train_step_cost(
        lambda: diffusion_loss(unet, sched, latents, labels, ucfg.snr_gamma,
                               slice_positions=positions).mean(), unet.parameters())
    from pipelines.ldm.pipeline_adni import condition_inputs
    unet_fwd = forward_flops(lambda: unet(latents, torch.tensor([500]),
                                          **condition_inputs(unet, labels, positions)))
    sampler = make_scheduler(scfg.scheduler, sched.config)
    sampler.set_timesteps(scfg.num_inference_steps)
    interval = check_interval(scfg.guidance_interval or None)
    guided = guided_steps(sampler, sampler.timesteps, interval)
    if scfg.guidance_scale <= 1:
        guided = [False] * len(guided)
    unet_passes = len(guided) + sum(guided)
    sample_flops = unet_passes * unet_fwd + decode

    stages = {
        "vae": {"what": f"train the VAE: {steps:,} steps x {vcfg.train_batch_size}",
                "images": steps * vcfg.train_batch_size, "flops_per_image": vae_flops,
                "batch": vcfg.train_batch_size, "parameters": vae_params,
                "state_bytes": state_bytes(vae_params, vcfg.ema_decay > 0),
                "activation_bytes_per_image": on["activation_bytes"],
                "detail": {"flops_disc_on": on["flops"], "flops_disc_off": off["flops"],
                           "disc_share": disc_share}},
        "cache": {"what": f"encode the latent cache: {train_images:,} slices"
                          + (" and their mirror images" if cfg.data.flip else ""),
                  "images": train_images * (2 if cfg.data.flip else 1), "flops_per_image": encode,
                  "batch": 64, "parameters": count(vae), "state_bytes": count(vae) * 4,
                  "activation_bytes_per_image": 0},
        "unet": {"what": f"train the UNet: {ucfg.max_train_steps:,} steps x "
                         f"{ucfg.train_batch_size}",
                 "images": ucfg.max_train_steps * ucfg.train_batch_size,
                 "flops_per_image": unet_step["flops"], "batch": ucfg.train_batch_size,
                 "parameters": count(unet), "state_bytes": state_bytes(count(unet),
                                                                       ucfg.ema_decay > 0),
                 "activation_bytes_per_image": unet_step["activation_bytes"]},
        "sample": {"what": f"sample {SAMPLED} images: {scfg.scheduler}, "
                           f"{scfg.num_inference_steps} steps, {sum(guided)} guided",
                   "images": SAMPLED, "flops_per_image": sample_flops, "batch": scfg.batch_size,
                   "parameters": count(unet) + count(vae),
                   "state_bytes": (count(unet) + count(vae)) * 4,
                   "activation_bytes_per_image": 0,
                   "detail": {"unet_forward_flops": unet_fwd, "unet_passes": unet_passes,
                              "decode_flops": decode}},
    }
    for s in stages.values():
        s["pflop"] = s["images"] * s["flops_per_image"] / 1e15
        s["hours_1_gpu"] = s["pflop"] * 1e15 / (tflops * 1e12) / 3600
        s["hours_8_gpus"] = s["hours_1_gpu"] / 8
        s["memory_gib"] = (s["state_bytes"] + s["batch"] * s["activation_bytes_per_image"]) / GIB
    return {"resolution": res, "latent_shape": [vcfg.latent_channels, size, size],
            "tflops_assumed": tflops, "train_images": train_images, "stages": stages}


def markdown(record: dict, config: str) -> str:
    latent = "x".join(map(str, record["latent_shape"]))
    lines = [f"Projection for `{config}` ({record['resolution']} px, {latent} latents), "
             f"{record['train_images']:,} training slices, at an assumed "
             f"{record['tflops_assumed']:.0f} TFLOP/s achieved per GPU (not measured):", "",
             "| stage | work | GFLOP/img | PFLOP | minutes, 1 GPU | minutes, 8 GPUs | "
             "GPU memory per process (computed) |", "|---|---|---|---|---|---|---|"]
    for name, s in record["stages"].items():
        lines.append(f"| {name} | {s['what']} | {s['flops_per_image'] / 1e9:.1f} | "
                     f"{s['pflop']:.1f} | {s['hours_1_gpu'] * 60:.1f} | "
                     f"{s['hours_8_gpus'] * 60:.1f} | "
                     f"{s['memory_gib']:.1f} GiB at batch {s['batch']}"
                     f"{'' if s['activation_bytes_per_image'] else ' (weights; no backward)'} |")
    total = sum(s["hours_1_gpu"] for s in record["stages"].values())
    lines += ["", f"All stages: {total * 60:.0f} GPU-minutes at that rate ({total * 60 / 8:.0f} "
              "minutes on 8 GPUs)."]
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/adni256.yaml")
    parser.add_argument("--tflops", type=float, default=300.0,
                        help="assumed achieved TFLOP/s per GPU")
    parser.add_argument("--train_images", type=int, default=FULL_RELEASE_TRAIN)
    parser.add_argument("--out", default=None, help="also write project_gpu.{json,md} here")
    args, overrides = parser.parse_known_args(argv)
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    record = project(cfg, args.tflops, args.train_images)
    record |= {"config": args.config, "overrides": overrides, "date": time.strftime("%Y-%m-%d"),
               "seconds": round(time.perf_counter() - t0, 1)}
    table = markdown(record, " ".join([args.config, *overrides]))
    print(table)
    if args.out:
        out = Path(args.out)
        write_json(out / "project_gpu.json", record)
        write_text(out / "project_gpu.md", table)
    return record


if __name__ == "__main__":
    main()
