"""The GPU check: every stage of a config for a few minutes on this machine, timed and counted,
so the first GPU this project meets turns into figures for the results page in one command.

    bash bench/gpu_check.sh                                   # GPUs: configs/adni256.yaml
    bash bench/gpu_check.sh --config configs/tiny.yaml --steps 6 --out /tmp/gc   # CPU smoke run

Stages, each the command a user runs (as tools.demo does): the stand-in set (tools.phantom),
train_vae.py and train_unet.py for ``--minutes`` of training each (under ``accelerate launch
--multi_gpu`` on all GPUs when there are several), sample.py. OUT/gpu_check.json then holds, per
stage: steady img/s (the trainers' ``steady_img_per_s``: warm-up, validation and saves left out),
peak GPU memory per process, FLOPs per image (torch.utils.flop_counter on one training step,
forward + backward, matmuls and convolutions), achieved TFLOP/s and MFU against the device's dense
bf16 peak; OUT/sample_grid.png holds generated AD and NC slices, OUT/gpu_check.md the table for
the results page and OUT/gpu_check.log every stage's output.

Packages the machine lacks (diffusers, datasets, nibabel, nilearn) install from the wheels in
.whl/ (``make gpu-wheels``) into --site, before anything imports them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from pipelines.errors import UserError, cli_entry
from pipelines.files import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("diffusers", "datasets", "nibabel", "nilearn")  # what the stages import or read
IMPORTED = ("diffusers", "datasets", "nibabel")  # nilearn only holds the templates phantom reads
# Dense bf16 tensor-core peaks in TFLOP/s, per GPU, from NVIDIA's data sheets (which print twice
# these "with sparsity"); the first name found in torch.cuda.get_device_name() wins.
BF16_PEAK_TFLOPS = (("H200 NVL", 835.5), ("H200", 989.4), ("H100 NVL", 835.5),
                    ("H100 PCIe", 756.5), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.05),
                    ("L4", 121.0))
PEAK_SOURCE = "NVIDIA data sheet, dense bf16 tensor core (half the 'with sparsity' figure)"


def ensure_packages(wheels: Path, site: Path) -> dict:
    """Install ``wheels/*.whl`` into ``site`` when a package in NEEDED is missing, and put
    ``site`` first on this process's and its children's path. A GPU image lacks some of them
    and cannot reach a registry; a machine that has them all (the venv) is used as it is."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return {"missing": [], "installed": []}
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise UserError(f"{', '.join(missing)} not installed and no wheels in {wheels}: run "
                        "`make gpu-wheels` where pip reaches a registry and bring .whl/ along")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                    *map(str, found)], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()
    still = [name for name in missing if importlib.util.find_spec(name) is None]
    if still:
        raise UserError(f"{', '.join(still)} still missing after installing {wheels}/*.whl")
    for name in IMPORTED:  # now, not minutes later in a stage: the image's own packages
        try:                # (pyarrow, huggingface_hub, ...) may not suit the wheels' versions
            importlib.import_module(name)
        except Exception as err:
            raise UserError(f"{name} from {wheels} does not import here ({type(err).__name__}: "
                            f"{err}); carry wheels of the versions it needs too") from None
    return {"missing": missing, "installed": [w.name for w in found], "site": str(site)}


def bf16_peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from the table, None for a device not in it (or a CPU)."""
    for name, peak in BF16_PEAK_TFLOPS:
        if name in device_name:
            return peak
    return None


def run_stage(name: str, cmd: list[str], log: Path) -> float:
    """Run one stage's command from the repository root, its output to the console and the log;
    returns its wall seconds, stops the check with the stage's exit code if it fails."""
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n=== {name}: {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        code = proc.wait()
    seconds = time.perf_counter() - t0
    if code != 0:
        print(f"gpu check stopped: stage '{name}' exited {code} (output in {log})",
              file=sys.stderr)
        sys.exit(code)
    print(f"=== {name}: {seconds:.0f} s", flush=True)
    return seconds


def launcher(num_gpus: int, mixed_precision: str) -> list[str]:
    """One process per GPU through Accelerate when there are several; plain Python otherwise."""
    if num_gpus <= 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines",
            "1", "--num_processes", str(num_gpus), "--mixed_precision", mixed_precision,
            "--dynamo_backend", "no"]


def train_flops(cfg, device) -> dict:
    """FLOPs per image of one training step (forward + backward, batch 1, the run's precision):
    the VAE with and without its discriminator, the UNet on latents of the VAE's size."""
    import torch

    from bench.bench_train import step_flops
    from pipelines.ldm.objective import diffusion_loss, training_scheduler
    from pipelines.ldm.unet import build_unet
    from pipelines.training import resolve_precision
    from pipelines.vae.model import PatchDiscriminator, build_vae, vae_downsample_factor
    from pipelines.vae.objective import VAETrainingModel

    res, vcfg, ucfg = cfg.data.resolution, cfg.vae, cfg.unet
    torch.manual_seed(0)

    def counted(section, fn) -> int:
        bf16 = resolve_precision(section.mixed_precision) == "bf16"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return step_flops(fn)

    vae = build_vae(vcfg, res).to(device)
    disc = PatchDiscriminator(vcfg.disc_channels).to(device) if vcfg.disc_weight > 0 else None
    model = VAETrainingModel(vae, disc, vcfg)
    image = torch.rand(1, 1, res, res, device=device) * 2 - 1
    out = {"vae_off": counted(vcfg, lambda: model(image, -1)[0])}  # step -1: before the disc
    out["vae_on"] = counted(vcfg, lambda: model(image, vcfg.disc_start_step)[0]) if disc \
        else out["vae_off"]
    size = res // vae_downsample_factor(vae)
    unet = build_unet(ucfg, vcfg.latent_channels, size).to(device)
    latents = torch.randn(1, vcfg.latent_channels, size, size, device=device)
    labels = torch.tensor([1], device=device)
    levels = torch.tensor([0.5], device=device) if ucfg.level_conditioning else None
    scheduler = training_scheduler(ucfg)
    out["unet"] = counted(ucfg, lambda: diffusion_loss(unet, scheduler, latents, labels,
                                                       ucfg.snr_gamma,
                                                       slice_positions=levels).mean())
    return out


def vae_flops_per_image(flops: dict, metrics: dict, vcfg) -> tuple[float, float]:
    """The mean FLOPs per image over the timed steps, which may straddle the step where the
    discriminator starts, and the share of those steps with it on."""
    steps, timed = metrics["steps"], metrics["steady_steps"]
    first = steps - timed  # step index of the first timed step (this run starts at 0)
    on = max(0, steps - max(first, vcfg.disc_start_step)) if vcfg.disc_weight > 0 else 0
    share = on / timed if timed else 0.0
    return share * flops["vae_on"] + (1 - share) * flops["vae_off"], share


def matmul_tflops(device, n: int = 8192, repeats: int = 10) -> float | None:
    """What this GPU reaches on a large bf16 matrix product: the practical ceiling beside the
    data sheet's. None on a CPU."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def train_record(metrics: dict, seconds: float, flops_per_image: float, peak: float | None,
                 num_gpus: int, precision: str, batch: int) -> dict:
    speed = metrics["steady_img_per_s"]
    achieved = flops_per_image * speed / 1e12 if speed else None
    return {
        "img_per_s": speed,
        # over the loop's wall time: warm-up, validation and the save included
        "img_per_s_overall": metrics["images_seen"] / max(metrics["wall_seconds"], 1e-9),
        "steps": metrics["steps"], "timed_steps": metrics["steady_steps"],
        "timed_seconds": metrics["steady_seconds"], "stage_seconds": round(seconds, 1),
        "batch_per_process": batch, "processes": max(num_gpus, 1), "precision": precision,
        "peak_gpu_memory_gib": metrics["peak_gpu_memory_gib"],
        "gflop_per_image": flops_per_image / 1e9,
        "achieved_tflops": achieved,
        "mfu": achieved / (peak * num_gpus) if achieved and peak and num_gpus else None,
    }


def markdown(record: dict) -> str:
    """The table the results page takes."""
    dev = record["device"]
    precision = {"no": "fp32"}

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"{dev['count']} x {dev['name']}, torch {record['versions']['torch']}, CUDA "
             f"{record['versions']['cuda']}, config {record['config']} at "
             f"{record['resolution']} px, {record['total_seconds'] / 60:.1f} min in all", "",
             "| stage | img/s | GFLOP/img | TFLOP/s | MFU | peak GPU GiB | steps |",
             "|---|---|---|---|---|---|---|"]
    for name in ("vae", "unet"):
        s = record["stages"][name]
        peak = max(s["peak_gpu_memory_gib"]) if s["peak_gpu_memory_gib"] else None
        kind = precision.get(s["precision"], s["precision"])
        lines.append(f"| {name} ({kind}, batch {s['batch_per_process']} x {s['processes']}) | "
                     f"{fmt(s['img_per_s'], '.1f')} | "
                     f"{s['gflop_per_image']:.1f} | {fmt(s['achieved_tflops'], '.1f')} | "
                     f"{fmt(s['mfu'], '.1%')} | {fmt(peak, '.1f')} | {s['steps']} |")
    s = record["stages"]["sample"]
    lines.append(f"| sample ({s['scheduler']}, {s['num_inference_steps']} steps, guidance "
                 f"{s['guidance_scale']}) | {fmt(s['img_per_s'], '.2f')} | | | | | |")
    if dev["bf16_peak_tflops"]:
        lines += ["", f"MFU against {dev['bf16_peak_tflops']:.1f} TFLOP/s per GPU "
                  f"({dev['peak_source']})."]
    if dev["matmul_tflops"]:
        lines += ["", f"A bf16 8192^3 matmul reached {dev['matmul_tflops']:.0f} TFLOP/s here."]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/adni256.yaml")
    parser.add_argument("--out", default="outputs/gpu_check")
    parser.add_argument("--minutes", type=float, default=2.0,
                        help="training time per trainer (0: until --steps)")
    parser.add_argument("--steps", type=int, default=None,
                        help="at most this many steps per trainer (default: the config's)")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--train_patients", type=int, default=42, help="stand-in set, per class")
    parser.add_argument("--test_patients", type=int, default=10)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--sample_images", type=int, default=32, help="per label")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"))
    parser.add_argument("--site", default="/tmp/site", help="where missing wheels install")
    return parser.parse_known_args(argv)  # the rest: config overrides for both trainers


@cli_entry
def main(argv=None):
    t_all = time.perf_counter()
    args, extra = parse_args(argv)
    env = ensure_packages(Path(args.wheels), Path(args.site))
    import torch

    from pipelines.config import load_config
    from pipelines.training import (
        THROUGHPUT_WARMUP_STEPS,
        resolve_precision,
        scale_for_processes,
    )

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device("cuda" if num_gpus else "cpu")
    overrides = [f"--{s}.max_train_minutes={args.minutes}" for s in ("vae", "unet")]
    # the check measures training: one grid and one save, at the end
    overrides += [f"--{s}.{k}=10000000" for s in ("vae", "unet")
                  for k in ("validation_steps", "checkpointing_steps")]
    if args.steps is not None:
        overrides += [f"--{s}.max_train_steps={args.steps}" for s in ("vae", "unet")]
    if args.resolution is not None:
        overrides.append(f"--data.resolution={args.resolution}")
    overrides += extra
    cfg = load_config(args.config, overrides)  # a bad config or flag stops here, before work
    precision = {s: resolve_precision(getattr(cfg, s).mixed_precision) for s in ("vae", "unet")}
    os.environ.setdefault("TQDM_MININTERVAL", "10")  # progress lines, not a flood, in the log

    data, vae_run, model = out / "data", out / "vae_run", out / "model"
    py, config = sys.executable, ["--config", str(Path(args.config).resolve())]
    seconds = {"data": run_stage("stand-in data", [
        py, "-m", "tools.phantom", "--out", str(data), "--train_patients",
        str(args.train_patients), "--test_patients", str(args.test_patients), "--slices",
        str(args.slices), "--workers", str(min(16, os.cpu_count() or 1))], log)}
    seconds["vae"] = run_stage("train VAE", [
        *launcher(num_gpus, precision["vae"]), "train_vae.py", *config, "--data", str(data),
        "--output_dir", str(vae_run), "--overwrite", *overrides], log)
    seconds["unet"] = run_stage("train UNet", [
        *launcher(num_gpus, precision["unet"]), "train_unet.py", *config, "--vae",
        str(vae_run / "vae"), "--data", str(data), "--output_dir", str(model), "--overwrite",
        *overrides], log)
    seconds["sample"] = run_stage("sample", [
        py, "sample.py", "--model", str(model), "--label", "all", "--num_images",
        str(args.sample_images), "--batch_size", str(args.sample_images), "--out",
        str(out / "samples")], log)

    print("\n=== counting FLOPs", flush=True)
    flops = train_flops(cfg, device)
    name = torch.cuda.get_device_name(0) if num_gpus else cpu_name()
    peak = bf16_peak_tflops(name) if num_gpus else None
    vae_metrics = json.loads((vae_run / "metrics.json").read_text())
    unet_metrics = json.loads((model / "metrics.json").read_text())
    # the trainers ran the config as scale_lr made it for this many processes
    vae_flops, disc_share = vae_flops_per_image(
        flops, vae_metrics, scale_for_processes(cfg.vae, max(num_gpus, 1)))
    stages = {
        "data": {"stage_seconds": round(seconds["data"], 1),
                 **json.loads((data / "phantom.json").read_text())["counts"]},
        "vae": {**train_record(vae_metrics, seconds["vae"], vae_flops, peak, num_gpus,
                               precision["vae"], cfg.vae.train_batch_size),
                "discriminator_share_of_timed_steps": disc_share},
        "unet": {**train_record(unet_metrics, seconds["unet"], flops["unet"], peak, num_gpus,
                                precision["unet"], cfg.unet.train_batch_size),
                 "latent_shape": unet_metrics["latent_shape"]},
        "sample": sample_record(out / "samples", seconds["sample"]),
    }
    grid_path = sample_grid(out / "samples", out / "sample_grid.png")
    record = {
        "config": args.config, "overrides": overrides, "resolution": cfg.data.resolution,
        "device": {"type": device.type, "name": name, "count": max(num_gpus, 1),
                   "bf16_peak_tflops": peak, "peak_source": PEAK_SOURCE if peak else None,
                   "matmul_tflops": matmul_tflops(device)},
        "versions": versions(torch), "environment": env, "stages": stages,
        "warmup_steps_not_timed": THROUGHPUT_WARMUP_STEPS, "sample_grid": str(grid_path),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(out / "gpu_check.json", record)
    table = markdown(record)
    write_text(out / "gpu_check.md", table)
    print(f"\n{table}\nwrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {grid_path}")


def sample_record(folder: Path, seconds: float) -> dict:
    """Sampling speed from sample.json: the last label's batch (the first one's time holds the
    warm-up: kernel selection, first allocations)."""
    info = json.loads((folder / "sample.json").read_text())
    last = list(info["labels"].values())[-1]
    return {"img_per_s": last["num_images"] / last["seconds"] if last["seconds"] else None,
            "num_images_per_label": last["num_images"], "stage_seconds": round(seconds, 1),
            "scheduler": info.get("scheduler"), "guidance_scale": info.get("guidance_scale"),
            "num_inference_steps": info.get("num_inference_steps")}


def sample_grid(folder: Path, path: Path, per_label: int = 8) -> Path:
    """One grid: a row of AD slices above a row of NC slices, as sample.py wrote them."""
    import numpy as np
    from PIL import Image

    from pipelines.plots import grid, save_png
    from pipelines.slices import CLASS_NAMES

    rows = [sorted((folder / label).glob("*.png"))[:per_label] for label in reversed(CLASS_NAMES)]
    images = np.stack([np.asarray(Image.open(p)) for row in rows for p in row])
    return save_png(grid(images, nrow=max(map(len, rows))), path)


def cpu_name() -> str:
    """The processor's model name (Linux), for the record of a CPU run."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def versions(torch) -> dict:
    """What ran: the interpreter, torch and CUDA, and the packages the wheels may have brought."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    for name in ("diffusers", "accelerate", "datasets", "transformers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
