"""One table for "is it better than StyleGAN2?": models measured by evaluate.py, side by side.

    python evaluate.py --model outputs/stylegan2_demo        # each model, same data, same judge
    python bench/compare_models.py --models outputs/demo/model outputs/stylegan2_demo \
        --out docs/comparison

Reads MODEL/eval/metrics.json (quality, faithfulness, diversity, memorisation, TSTR) and the
training metrics of each model (the LDM's VAE stage included), measures sampling speed here
(median of --runs, same batch for both), and writes OUT/comparison.{md,json} and
OUT/comparison.png (rows: real NC, then each model's NC; real AD, then each model's AD).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.errors import UserError, cli_entry
from pipelines.files import write_json
from pipelines.plots import grid, save_png
from pipelines.sampling import generate, load_pipeline, sampling_settings
from pipelines.slices import CLASS_NAMES


def training_record(model_dir: Path, pipe) -> dict:
    """Wall time, images/s and parameters of everything trained to make this model."""
    unet_or_gan = json.loads((model_dir / "metrics.json").read_text())
    stages = [unet_or_gan]
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    params = sum(p.numel() for m in modules for p in m.parameters())
    if "vae" in unet_or_gan:  # the LDM: its first stage counts too
        vae_metrics = Path(unet_or_gan["vae"]).parent / "metrics.json"
        stages.insert(0, json.loads(vae_metrics.read_text()))
    minutes = sum(s["wall_seconds"] for s in stages) / 60
    return {"train_minutes": minutes, "parameters": params,
            "train_img_per_s": [round(s["images_seen"] / s["wall_seconds"], 1) for s in stages],
            "steps": [s["steps"] for s in stages]}


def sampling_speed(pipe, n: int, runs: int) -> float:
    settings = sampling_settings(pipe)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        generate(pipe, "AD", n, seed=0, batch_size=n, settings=settings, progress=False)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def row(name, values, fmt="{:.3f}"):
    return f"| {name} | " + " | ".join(
        v if isinstance(v, str) else fmt.format(v) for v in values) + " |"


def table(names: list[str], records: list[dict]) -> list[str]:
    ev = [r["eval"] for r in records]
    lines = ["| measure | " + " | ".join(names) + " | real reference |",
             "|---|" + "---|" * (len(names) + 1)]
    fd_floor = ev[0]["fd"]["train_vs_test"]
    lines.append(row("Frechet distance, judge features (lower is better)",
                     [e["fd"]["gen_vs_test"] for e in ev] + [f"train vs test {fd_floor:.2f}"],
                     "{:.2f}"))
    lines.append(row("precision (k=3)", [e["precision"] for e in ev] + ["1 = all realistic"]))
    lines.append(row("recall (k=3)", [e["recall"] for e in ev] + ["1 = covers the data"]))
    real_acc = ev[0]["judge_acc"]["real_test"]
    for label in CLASS_NAMES:
        lines.append(row(f"judge accuracy on generated {label}",
                         [e["judge_acc"][f"gen_{label}"] for e in ev] +
                         [f"real test {real_acc:.3f}"]))
    lines.append(row("diversity (mean pairwise SSIM, lower = more diverse)",
                     [e["diversity"]["gen"] for e in ev] +
                     [f"real test {ev[0]['diversity']['real']:.3f}"]))
    lines.append(row("median nearest-train SSIM (memorisation)",
                     [e["memorisation"]["gen_nn_ssim_median"] for e in ev] +
                     [f"real test {ev[0]['memorisation']['test_nn_ssim_median']:.3f}"]))
    lines.append(row("TSTR accuracy", [e["tstr"] for e in ev] + [f"TRTR {ev[0]['trtr']:.3f}"]))
    lines.append(row("training wall time (min)", [r["train_minutes"] for r in records] + [""],
                     "{:.1f}"))
    lines.append(row("training img/s (per stage)",
                     [" + ".join(map(str, r["train_img_per_s"])) for r in records] + [""]))
    lines.append(row("sampling img/s (batch of 16, this machine)",
                     [r["sample_img_per_s"] for r in records] + [""], "{:.2f}"))
    lines.append(row("parameters (M, all sampling components)",
                     [r["parameters"] / 1e6 for r in records] + [""], "{:.2f}"))
    return lines


def figure(pipes, data: Path, out: Path, n: int = 6) -> Path:
    rows = []
    for label in CLASS_NAMES:
        real = sorted((data / "test" / label).glob("*.jpeg"))
        picks = [real[int(i)] for i in np.linspace(0, len(real) - 1, n)]
        rows.append(np.stack([np.asarray(Image.open(p).convert("L")) for p in picks]))
        for pipe, guidance in pipes:
            settings = sampling_settings(pipe, guidance_scale=guidance)
            rows.append(generate(pipe, label, n, seed=0, batch_size=n, settings=settings,
                                 progress=False))
    return save_png(grid(np.concatenate(rows), nrow=n, pad=4), out / "comparison.png")


@cli_entry
def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--names", nargs="+", default=None)
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--out", default="outputs/comparison")
    parser.add_argument("--evals", nargs="+", default=None,
                        help="evaluate.py output folder per model (default MODEL/eval)")
    parser.add_argument("--guidance_scale", nargs="+", type=float, default=None,
                        help="per model, for the figure (default: each model's config)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    names = args.names or [Path(m).name for m in args.models]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, pipes = [], []
    evals = args.evals or [Path(m) / "eval" for m in args.models]
    guidance = args.guidance_scale or [None] * len(args.models)
    for model, eval_dir in zip(map(Path, args.models), map(Path, evals), strict=True):
        metrics = eval_dir / "metrics.json"
        if not metrics.is_file():
            raise UserError(f"{metrics} is missing: run `python evaluate.py --model {model}` "
                            "first")
        pipe = load_pipeline(model)
        pipes.append((pipe, guidance[len(pipes)]))
        records.append({"model": str(model), "eval_dir": str(eval_dir),
                         "eval": json.loads(metrics.read_text()),
                        **training_record(model, pipe),
                        "sample_img_per_s": sampling_speed(pipe, 16, args.runs)})
    lines = table(names, records)
    figure(pipes, Path(args.data), out)
    (out / "comparison.md").write_text("\n".join(lines) + "\n\n![side by side](comparison.png)\n"
                                       f"\nRows: real NC, {', '.join(names)} NC; real AD, "
                                       f"{', '.join(names)} AD.\n")
    write_json(out / "comparison.json", {"names": names, "records": records})
    print("\n".join(lines))
    print(f"wrote {out}/comparison.{{md,json,png}}")


if __name__ == "__main__":
    main()
