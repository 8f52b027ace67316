"""`make demo`: every stage on the stand-in data, timed, then one report with the targets.

    python -m tools.demo [--data data/phantom] [--out outputs/demo] [--config configs/demo.yaml]

Each stage is the same command a user runs (so the demo tests the real entry points), started as
a subprocess; its wall time and the peak memory of the largest process are recorded in
OUT/timings.json. Stages resume: a rerun continues an interrupted training from its checkpoint.
OUT/report.md puts real and generated slices side by side and checks each demo target.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines import counterfactual_axioms as axioms
from pipelines import speed_probe
from pipelines.cli import script_parser
from pipelines.config import load_config
from pipelines.embedding import READING_HEADING
from pipelines.errors import cli_entry
from pipelines.evaluation import LEVEL_ERROR_TARGET
from pipelines.files import write_json
from pipelines.plots import grid, save_png
from tools.level_figure import level_figure

SHARP_FROM = 128  # px: the resolution from which the (1/4, 1/2] band can exist at all
PAIR_PATIENTS = 10  # test patients per class rendered again at the other class's severity: all
#   of them (the share of edits closer to the truth is set patient by patient; 3 gave 0.67 / 0.63
#   where all 10 give 0.47 / 0.69, RESULTS)
EDITS_PER_DIRECTION = 8  # slices the demo edits and scores per direction (of 200 pairs)
EMBEDDINGS = (("embedding", "The VAE latents (the diffusion model's space)"),
              ("embedding_judge", "The judge's features (a classifier trained for the label)"))
# (folder, what is mapped): the latents are the design's map; the judge's is where the label shows


def stages(config: str, data: Path, out: Path,
           caps: bool = True) -> list[tuple[str, list[str]]]:
    py = sys.executable
    lift = [] if caps else ["--max_train_minutes", "0"]  # every step of the budget, however long
    return [
        ("stand-in data", [py, "-m", "tools.phantom", "--out", str(data), "--counterfactuals",
                           str(PAIR_PATIENTS)]),
        ("inspect", [py, "-m", "pipelines.data", "inspect", str(data)]),
        ("train VAE", [py, "train_vae.py", "--config", config, "--data", str(data),
                       "--output_dir", str(out / "vae_run"), "--resume_from_checkpoint",
                       "latest", *lift]),
        ("train UNet", [py, "train_unet.py", "--config", config, "--vae",
                        str(out / "vae_run" / "vae"), "--data", str(data), "--output_dir",
                        str(out / "model"), "--resume_from_checkpoint", "latest", *lift]),
        ("sample", [py, "sample.py", "--model", str(out / "model"), "--label", "all",
                    "--out", str(out / "samples")]),
        ("embed", [py, "embed.py", "--model", str(out / "model"), "--data", str(data),
                   "--out", str(out / "embedding"), "--with_generated", "100"]),
        ("evaluate", [py, "evaluate.py", "--model", str(out / "model"), "--data", str(data),
                      "--out", str(out / "eval")]),
        # the judge is trained (and cached in MODEL/judge) by evaluate: this map reuses it
        ("embed, judge features", [py, "embed.py", "--model", str(out / "model"), "--data",
                                   str(data), "--space", "judge", "--out",
                                   str(out / "embedding_judge"), "--with_generated", "100"]),
        ("counterfactuals", [py, "edit.py", "--model", str(out / "model"), "--data", str(data),
                             "--evaluate", "--num_images", str(EDITS_PER_DIRECTION), "--out",
                             str(out / "counterfactual")]),
    ]


LIFT_FLAG = "--no_time_caps"
SMALLER = ("a smaller config (a copy of configs/demo.yaml with lower max_train_steps; the "
           "models and targets then differ from the documented ones)")


def speed_check(config: str, out: Path, caps: bool, seconds: float = 12.0) -> dict | None:
    """Time ``seconds`` of training steps of the VAE and the UNet here, print each stage's projected
    time and, when a step budget cannot fit its time cap, a warning with what to do. Recorded in
    OUT/speed_check.json (the report's "Host speed"). Skipped once the UNet has trained."""
    if (out / "model" / "metrics.json").is_file():
        return None
    print("=== speed check: a few training steps of each model on this host", flush=True)
    t0 = time.time()
    projections = speed_probe.probe(load_config(config), caps, seconds)
    rest = speed_probe.rest_seconds(projections)
    training = sum(p.seconds for p in projections)
    lines = speed_probe.summary_lines(projections) + [
        f"projected: training ~{training / 60:.1f} min, the stages after it roughly "
        f"~{rest / 60:.0f} min more"]
    warning = speed_probe.warning_lines(projections, f"{LIFT_FLAG} (`make demo DEMO_ARGS="
                                        f"{LIFT_FLAG}`)", SMALLER)
    print("\n".join(lines), flush=True)
    if warning:
        print("\n" + "\n".join(warning) + "\n", file=sys.stderr, flush=True)
    record = {"seconds": round(time.time() - t0, 1), "caps": caps,
              "stages": speed_probe.as_record(projections),
              "projected_training_seconds": round(training, 1),
              "projected_rest_seconds": round(rest, 1), "lines": lines, "warning": warning}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "speed_check.json", record)
    return record


def run_stages(config: str, data: Path, out: Path, caps: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t_all = time.time()
    todo = stages(config, data, out, caps)
    for i, (name, cmd) in enumerate(todo, 1):
        print(f"\n=== [{i}/{len(todo)}] {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            print(f"demo stopped: stage '{name}' exited {proc.returncode}; fix the message above "
                  "and run `make demo` again (training resumes from its checkpoint)",
                  file=sys.stderr)
            sys.exit(proc.returncode)
        timings[name] = round(time.time() - t0, 1)
        print(f"=== {name}: {timings[name]:.0f} s (total so far {time.time() - t_all:.0f} s)")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    record = {"stages_seconds": timings, "total_seconds": round(time.time() - t_all, 1),
              "peak_rss_gib": round(peak_kib / 2**20, 2), "config": config}
    write_json(out / "timings.json", record)
    return record


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def real_vs_generated_figure(data: Path, out: Path, n: int = 6) -> Path:
    """Rows: real NC, generated NC, real AD, generated AD (all at the native 256x240)."""
    rows = []
    for label in ("NC", "AD"):
        real = sorted((data / "test" / label).glob("*.jpeg"))
        picks = [real[int(i)] for i in np.linspace(0, len(real) - 1, n)]
        rows.append(np.stack([np.asarray(Image.open(p).convert("L")) for p in picks]))
        gen = sorted((out / "samples" / label).glob("*.png"))[:n]
        rows.append(np.stack([np.asarray(Image.open(p)) for p in gen]))
    return save_png(grid(np.concatenate(rows), nrow=n, pad=4), out / "real_vs_generated.png")


def check(name: str, value, target: str, ok: bool | None) -> str:
    mark = "n/a" if ok is None else ("met" if ok else "MISSED")
    return f"| {name} | {value} | {target} | {mark} |"


def targets(timing: dict, vae: dict, ev: dict) -> list[str]:
    """The demo targets of the project, each with the measured value."""
    rows = ["| target | measured | goal | |", "|---|---|---|---|"]
    if timing:
        total = timing["total_seconds"] - timing["stages_seconds"].get("stand-in data", 0)
        rows.append(check("whole run (data set-up excluded)", f"{total / 60:.1f} min",
                          "<= 30 min", total <= 1800))
        rows.append(check("peak memory", f"{timing['peak_rss_gib']:.2f} GiB", "< 6 GiB",
                          timing["peak_rss_gib"] < 6))
    if vae:
        rows.append(check("VAE held-out PSNR", f"{vae['psnr']:.2f} dB", ">= 30 dB",
                          vae["psnr"] >= 30))
        rows.append(check("VAE held-out SSIM", f"{vae['ssim']:.4f}", ">= 0.92",
                          vae["ssim"] >= 0.92))
    if ev:
        acc = ev["judge_acc"]
        for label in ("AD", "NC"):
            ratio = acc[f"gen_{label}"] / max(acc["real_test"], 1e-9)
            rows.append(check(f"judge accuracy on generated {label} / on real test",
                              f"{acc[f'gen_{label}']:.3f} / {acc['real_test']:.3f} = {ratio:.2f}",
                              ">= 0.90", ratio >= 0.9))
        fd = ev["fd"]
        rows.append(check("Frechet distance / real floor",
                          f"{fd['gen_vs_test']:.2f} / {fd['train_vs_test']:.2f} = "
                          f"{fd['gen_vs_test'] / max(fd['train_vs_test'], 1e-9):.2f}", "<= 3",
                          fd["gen_vs_test"] <= 3 * fd["train_vs_test"]))
        for name, goal in (("precision", 0.7), ("recall", 0.55)):
            value = ev[name]
            rows.append(check(name, "n/a" if value is None else f"{value:.3f}", f">= {goal}",
                              None if value is None else value >= goal))
        div = ev["diversity"]
        rows.append(check(f"diversity ({div['measure']}) gen vs real",
                          f"{div['gen']:.3f} vs {div['real']:.3f}", "within 0.05",
                          abs(div["gen"] - div["real"]) <= 0.05))
        mem = ev["memorisation"]
        rows.append(check("median nearest-train SSIM gen vs real test",
                          f"{mem['gen_nn_ssim_median']:.3f} vs {mem['test_nn_ssim_median']:.3f}",
                          "gen <= real", mem["gen_nn_ssim_median"] <= mem["test_nn_ssim_median"]))
        rows.append(check("TSTR / TRTR", f"{ev['tstr']:.3f} / {ev['trtr']:.3f}", ">= 0.90",
                          ev["tstr"] >= 0.9 * ev["trtr"]))
        rows.extend(level_targets(ev.get("levels")))
        rows.extend(sharpness_targets(ev.get("sharpness"), vae.get("resolution")))
    return rows


def sharpness_targets(sharp: dict | None, resolution: int | None) -> list[str]:
    """Detail at the native size: targets from 128 px up, information below.

    A 64 px model has no frequencies above 1/4 of the native Nyquist to give, so its rows are
    shown without a verdict.
    """
    if not sharp or "vae_reconstruction" not in sharp:
        return []
    graded = resolution is not None and resolution >= SHARP_FROM
    ratios = sharp["all"]["band_energy_ratio"]
    names = list(ratios)
    top, lower = names[2], names[:2]  # (1/4, 1/2] and the two bands below it
    rows = [check(f"detail {top} of Nyquist, generated / real energy", f"{ratios[top]:.3f}",
                  ">= 0.5", ratios[top] >= 0.5 if graded else None),
            check(f"detail {', '.join(lower)}", ", ".join(f"{ratios[b]:.3f}" for b in lower),
                  ">= 0.8", all(ratios[b] >= 0.8 for b in lower) if graded else None)]
    gen = sharp["all"]["log_spectrum_distance"]
    vae = sharp["vae_reconstruction"]["log_spectrum_distance"]
    rows.append(check("log-spectrum distance, generated / VAE reconstructions",
                      f"{gen:.3f} / {vae:.3f} = {gen / max(vae, 1e-9):.2f}", "<= 2",
                      gen <= 2 * vae if graded else None))
    return rows


def level_targets(levels: dict | None) -> list[str]:
    """Level faithfulness (a level-conditioned model only) and recall in every level third."""
    if not levels:
        return []
    rows = []
    gen, real = levels["generated_error"], levels["real_test_error"]
    if gen is not None:
        ratio = gen / max(real, 1e-9)
        rows.append(check("level error, generated at requested / real test",
                          f"{gen:.3f} / {real:.3f} = {ratio:.2f}", f"<= {LEVEL_ERROR_TARGET}",
                          ratio <= LEVEL_ERROR_TARGET))
    recalls = {name: t["recall"] for name, t in levels["terciles"].items()}
    # a target of the level-conditioned model; for a label-only one, information
    rows.append(check("recall in each level third (lowest, middle, highest)",
                      ", ".join(f"{r:.3f}" for r in recalls.values()), ">= 0.4",
                      all(r >= 0.4 for r in recalls.values()) if gen is not None else None))
    return rows


def _beside(intervals: dict, key: str, *notes: str) -> str:
    """" (95 % over patients a to b; notes)" from truth.json's edit_intervals and ``notes``, or
    "" when there is neither."""
    parts = ([f"95 % over patients {intervals[key][0]:.2f} to {intervals[key][1]:.2f}"]
             if key in intervals else []) + [n for n in notes if n]
    return f" ({'; '.join(parts)})" if parts else ""


def counterfactual_targets(truth: dict) -> list[str]:
    """The edits' targets per direction, from edit.py --evaluate's truth.json: the field's
    measures (``pipelines.counterfactual_axioms``) and closeness to the paired truth (a number
    that could not be computed, e.g. an AUC without changed pixels, is n/a)."""
    if not truth:
        return []

    def at_least(name, value, goal, beside=""):
        if value is None or value != value:
            return check(name, "n/a", f">= {goal}", None)
        return check(name, f"{value:.3f}{beside}", f">= {goal}", value >= goal)

    rows = ["| target | measured | goal | |", "|---|---|---|---|"]
    for direction, block in truth["directions"].items():
        found = block["rows"]
        edit = found[f"edit ({truth['method']})"]
        others = [row["mae_to_truth"] for name, row in found.items()
                  if name.startswith("baseline")]
        spread = block.get("edit_intervals", {})
        a = block.get("axioms")
        if a:
            flip, rev, comp = a["flip"], a["reversibility"], a["composition"]
            low = a["share_explained_interval"][0]
            rows += [
                check(f"{direction} flip rate (the truth itself; the truth at the edit's size)",
                      f"{flip['edit']:.3f} ({flip['truth']:.3f}; {flip['truth_at_size']:.3f})",
                      f">= the truth at the edit's size and >= {axioms.FLIP_OF_TRUTH} x the "
                      "truth", flip["met"]),
                check(f"{direction} share of the true change explained",
                      f"{a['share_explained']:.3f} (95 % over patients from {low:.3f})",
                      f">= {axioms.SHARE_TARGET}, low end > {axioms.SHARE_LOW_TARGET}",
                      a["share_explained"] >= axioms.SHARE_TARGET
                      and low > axioms.SHARE_LOW_TARGET),
                at_least(f"{direction} correlation with the true change",
                         a["change_correlation"], axioms.CORRELATION_TARGET),
                at_least(f"{direction} reversibility: one-way change / distance back",
                         rev["ratio"], axioms.REVERSIBILITY_TARGET),
                check(f"{direction} composition: drift after 5 null edits / one-way change",
                      "n/a" if comp["share_of_one_way"] is None
                      else f"{comp['share_of_one_way']:.3f}", f"< {axioms.COMPOSITION_TARGET}",
                      None if comp["share_of_one_way"] is None
                      else comp["share_of_one_way"] < axioms.COMPOSITION_TARGET)]
        rows += [at_least(f"{direction} identity SSIM outside the changed pixels",
                          edit["identity_ssim"], 0.95),
                 at_least(f"{direction} localisation AUC", edit["localisation_auc"], 0.75),
                 at_least(f"{direction} closer to the truth than the source",
                          edit["closer_than_source"], 0.7, _beside(spread, "closer_than_source")),
                 check(f"{direction} MAE to the truth, edit vs baselines",
                       f"{edit['mae_to_truth']:.2f} vs " + ", ".join(f"{m:.2f}" for m in others),
                       "below every baseline", all(edit["mae_to_truth"] < m for m in others))]
    return rows


def host_speed_section(check: dict, timing: dict, vae: dict, unet: dict) -> list[str]:
    """The speed check's projection beside what the training stages then took."""
    if not check:
        return []
    took = timing.get("stages_seconds", {}) if timing else {}
    rows = ["## Host speed", "", "Measured before training (`tools/demo.py`'s speed check):",
            "", *[f"- {line}" for line in check["lines"]], ""]
    if check["warning"]:
        rows += ["```", *check["warning"], "```", ""]
    rows += ["| stage | projected | took | steps projected | steps trained |",
             "|---|---|---|---|---|"]
    for p, name, metrics in zip(check["stages"], ("train VAE", "train UNet"), (vae, unet),
                                strict=True):
        seconds = took.get(name)
        rows.append(f"| {name} | {p['seconds'] / 60:.1f} min | "
                    f"{'-' if seconds is None else f'{seconds / 60:.1f} min'} | "
                    f"{p['steps_reached']} | {metrics.get('steps', '-')} |")
    return rows + [""]


def write_report(data: Path, out: Path) -> Path:
    timing, vae = _load(out / "timings.json"), _load(out / "vae_run" / "metrics.json")
    unet, ev = _load(out / "model" / "metrics.json"), _load(out / "eval" / "metrics.json")
    lines = ["# Demo report", "",
             "Stand-in data (not ADNI): see README. Rows: real NC, generated NC, real AD, "
             "generated AD.", ""]
    if (out / "samples").is_dir():
        real_vs_generated_figure(data, out)
        lines += ["![real vs generated](real_vs_generated.png)", ""]
    if unet.get("level_conditioned"):
        level_figure(out / "model", data, out / "levels.png")
        lines += ["Slice levels from the lowest (left) to the highest (right); rows: real NC, "
                  "generated NC, real AD, generated AD.", "", "![levels](levels.png)", ""]
    lines += ["## Targets", "", *targets(timing, vae, ev), ""]
    lines += host_speed_section(_load(out / "speed_check.json"), timing, vae, unet)
    if timing:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in timing["stages_seconds"].items()]
        lines.append("")
    if unet:
        lines += [f"UNet: {unet['steps']} steps, {unet['img_per_s']:.0f} img/s, "
                  f"{unet['parameters'] / 1e6:.1f}M parameters.", ""]
    if (out / "eval" / "metrics.md").is_file():
        lines += ["## Evaluation", "", (out / "eval" / "metrics.md").read_text(),
                  "![closest pairs](eval/closest_pairs.png)", "",
                  "![power spectra, generated vs real](eval/spectrum.png)", ""]
    truth = _load(out / "counterfactual" / "truth.json")
    if truth:
        lines += ["## Counterfactuals against the truth", "",
                  "Test slices edited to the other label (`edit.py --evaluate`), scored against "
                  "the same patients rendered at the other class's severity (the same rank in "
                  "its distribution). Columns: source, "
                  "edit, truth, edit - source, truth - source; AD->NC above, NC->AD below.", "",
                  "![counterfactuals](counterfactual/truth_panel.png)", "",
                  *counterfactual_targets(truth), "",
                  (out / "counterfactual" / "truth.md").read_text(), ""]
    maps = [(name, what) for name, what in EMBEDDINGS if (out / name / "embedding.md").is_file()]
    if maps:
        lines += ["## Embedding", ""]
        for name, what in maps:
            text = (out / name / "embedding.md").read_text()
            reading = text.split(READING_HEADING, 1)[-1].strip() if READING_HEADING in text else ""
            lines += [f"{what}: [{name}/embedding.md]({name}/embedding.md).", "",
                      f"![{what}]({name}/embedding.png)", "", reading, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--report_only", action="store_true", help="rewrite report.md only")
    parser.add_argument(LIFT_FLAG, action="store_true",
                        help="train every step of the VAE's and the UNet's budgets however long "
                             "it takes (the config's max_train_minutes lifted)")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    load_config(args.config)  # a missing or bad config stops here, before any stage runs
    if not args.report_only:
        caps = not args.no_time_caps
        speed_check(args.config, out, caps)
        run_stages(args.config, data, out, caps)
    path = write_report(data, out)
    print(f"\nreport: {path}")
    print("\n".join(targets(_load(out / "timings.json"), _load(out / "vae_run" / "metrics.json"),
                            _load(out / "eval" / "metrics.json"))))


if __name__ == "__main__":
    main()
