"""Rehearse every stage on a full-size stand-in and a quarter of it: wall time and peak RSS.

    python -m tools.phantom --out data/AD_NC_adni --size adni                 # 30,520 slices
    python -m tools.phantom --out data/AD_NC_adni_quarter --size adni_quarter  # 7,640
    python -m bench.rehearsal --data data/AD_NC_adni_quarter data/AD_NC_adni \\
        --out outputs/rehearsal [--stages inspect decode vae unet evaluate embed]

Each stage runs as its own process at the demo's 64 px on the CPU (configs/demo.yaml with short
training: the point is the size of the data, not the quality), one data set after the other;
its wall time and peak resident memory (``os.wait4``) are printed as it ends and the table, with
the ratio of the last set's figures to the first's, is written to OUT/rehearsal.md.
Stages: ``inspect`` (python -m pipelines.data inspect), ``decode`` (the train split at 64 px,
2 decoding workers), ``vae`` and ``unet`` (train_vae.py, train_unet.py: 20 steps; the U-Net's
includes encoding the latent cache of every train slice and its mirror), ``evaluate``
(evaluate.py, 1,000 generated per label, 2 sampling steps, judges of 60 steps) and ``embed``
(embed.py on the whole test split, at most 9,000, plus 1,000 generated, 2 sampling steps).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.data import load_split

STAGES = ("inspect", "decode", "vae", "unet", "evaluate", "embed")
CONFIG = "configs/demo.yaml"
SHORT = ["--max_train_steps", "20", "--checkpointing_steps", "1000", "--validation_steps",
         "1000"]


def commands(stage: str, data: Path, out: Path) -> list[str]:
    py = sys.executable
    model = ["--model", str(out / "ldm"), "--data", str(data), "--device", "cpu",
             "--num_inference_steps", "2"]
    return {
        "inspect": [py, "-m", "pipelines.data", "inspect", str(data)],
        "decode": [py, "-m", "bench.rehearsal", "--decode", str(data)],
        "vae": [py, "train_vae.py", "--config", CONFIG, "--data", str(data), "--output_dir",
                str(out / "vae"), "--overwrite", *SHORT],
        "unet": [py, "train_unet.py", "--config", CONFIG, "--data", str(data), "--vae",
                 str(out / "vae" / "vae"), "--output_dir", str(out / "ldm"), "--overwrite",
                 *SHORT, "--eval.judge_steps", "60", "--eval.tstr_steps", "30"],
        "evaluate": [py, "evaluate.py", *model, "--out", str(out / "eval"),
                     "--num_images", "1000"],
        "embed": [py, "embed.py", *model, "--out", str(out / "embed"),
                  "--with_generated", "1000", "--max_images", "9000"],
    }[stage]


def run(command: list[str], log: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit code) of one process, its output in ``log``."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1",
                                     "HF_DATASETS_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def count_slices(data: Path) -> int:
    return sum(1 for _ in data.glob("*/*/*.jpeg"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", type=Path, help="stand-in sets, smallest first")
    parser.add_argument("--out", type=Path, default=Path("outputs/rehearsal"))
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--decode", type=Path, help=argparse.SUPPRESS)  # the decode stage
    args = parser.parse_args(argv)
    if args.decode:
        train = load_split(args.decode, "train", 64, progress=False, num_workers=2)
        print(f"decoded {len(train)} train slices")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for data in args.data:
        n, out = count_slices(data), args.out / data.name
        out.mkdir(parents=True, exist_ok=True)
        for stage in args.stages:
            seconds, rss, code = run(commands(stage, data, out), out / f"{stage}.log")
            rows[(stage, data)] = (seconds, rss, code)
            print(f"{data.name} ({n} slices) {stage}: {seconds:.1f} s, peak RSS {rss:.0f} MiB"
                  + (f", exit {code} (see {out / stage}.log)" if code else ""), flush=True)
            table(args, rows)
    return 0


def table(args, rows) -> None:
    sets = [d for d in args.data if any((s, d) in rows for s in args.stages)]
    sizes = {d: count_slices(d) for d in sets}
    head = "| stage | " + " | ".join(f"{sizes[d]:,} slices: s / peak RSS MiB" for d in sets)
    lines = [head + (" | time ratio |" if len(sets) > 1 else " |"),
             "|---" * (len(sets) + 1 + (len(sets) > 1)) + "|"]
    for stage in args.stages:
        cells = []
        for d in sets:
            if (stage, d) in rows:
                seconds, rss, code = rows[(stage, d)]
                cells.append(f"{seconds:.1f} / {rss:.0f}" + (f" (exit {code})" if code else ""))
            else:
                cells.append("not run")
        ratio = ""
        if len(sets) > 1 and all((stage, d) in rows for d in (sets[0], sets[-1])):
            ratio = f" | {rows[(stage, sets[-1])][0] / rows[(stage, sets[0])][0]:.2f}"
        elif len(sets) > 1:
            ratio = " | "
        lines.append(f"| {stage} | " + " | ".join(cells) + ratio + " |")
    text = "\n".join(lines) + "\n"
    (args.out / "rehearsal.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
