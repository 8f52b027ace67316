"""How good, how faithful, how novel: one evaluation for any generator of AD/NC slices.

Every number compares generated slices with real ones in the same space and gives the real-data
reference beside it (the floor or the target), so a reader can tell good from bad without
knowing the metric. Features come from the judge (``pipelines.judge``), a classifier trained on
the real training split; docs/GUIDE.md, "Evaluation", says what each number means.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .config import EvalConfig
from .data import CLASS_NAMES, SliceSet, load_split
from .distributed import sharded
from .errors import UserError
from .files import write_json
from .judge import Judge, judge_for, tstr_accuracy
from .metrics import (
    diversity,
    frechet_distance,
    nearest_ssim,
    precision_recall,
    recall_per_sample,
)
from .plots import grid, save_grid, save_png
from .runs import check_writable_dir
from .sharpness import compare_spectra, plot_spectra
from .slices import NATIVE_SIZE, to_native

# the memorisation check's shortlist: exact SSIM with each query's k nearest train slices by L2
# on 32 px pooled images (``metrics.nearest_ssim``); its agreement with the exact search is
# measured by bench/bench_shortlist.py
MEMORISATION_CANDIDATES = 64


def _subset(slices: SliceSet, n: int, seed: int) -> SliceSet:
    """A class-balanced random subset of ``n`` images (all of them if there are fewer)."""
    if n >= len(slices):
        return slices
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for label in range(len(CLASS_NAMES)):
        idx = torch.nonzero(slices.labels == label).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[: n // len(CLASS_NAMES)]])
    return slices.subset(torch.cat(picks).sort().values)


def _set_metrics(judge, gen: torch.Tensor, gen_labels: torch.Tensor, test: SliceSet,
                 pre: dict, masks: tuple, seed: int) -> dict:
    """The metric block for one set of generated images (all labels, or one of them).

    ``pre`` holds what is computed once for all images (features, nearest-train SSIM);
    ``masks`` = (generated, test, train reference) pick this block's images out of it.
    """
    gen_mask, test_mask, train_mask = masks
    gen, gen_labels = gen[gen_mask], gen_labels[gen_mask]
    test = test.subset(torch.nonzero(torch.as_tensor(test_mask)).flatten())
    f_gen, f_test = pre["f_gen"][gen_mask], pre["f_test"][test_mask]
    f_train = pre["f_train"][train_mask]
    # a real slice's radius skips its own patient's near-duplicate neighbouring slices;
    # k = 3 (Kynkaanniemi et al.), fewer only when a tiny set has fewer neighbours to offer
    largest_patient = max(Counter(test.patients).values())
    k = max(1, min(3, len(f_gen) - 1, len(f_test) - largest_patient))
    precision = recall = None
    pr_note = None
    if len(f_test) - largest_patient < 1:  # one patient: no other patient to set a radius
        pr_note = ("not defined here, because these test slices come from one patient: a real "
                   "slice's radius leaves its own patient out and has no other to reach")
    else:
        precision, recall = precision_recall(f_test, f_gen, k=k, real_groups=test.patients)
    predicted = judge.predict(gen)
    measure, div_gen = diversity(gen, seed=seed)
    _, div_real = diversity(test.pixels, seed=seed)
    acc = {"real_test": float((judge.predict(test.pixels) == test.labels.numpy()).mean())}
    for label, name in enumerate(CLASS_NAMES):
        mask = (gen_labels == label).numpy()
        if mask.any():
            acc[f"gen_{name}"] = float((predicted[mask] == label).mean())
    nn_gen, nn_test = pre["nn_gen"][gen_mask], pre["nn_test"][test_mask]
    return {
        "fd": {"gen_vs_test": frechet_distance(f_gen, f_test),
               "train_vs_test": frechet_distance(f_train, f_test)},
        "precision": precision, "recall": recall, "pr_k": k, "judge_acc": acc,
        **({"precision_recall_not_defined": pr_note} if pr_note else {}),
        "diversity": {"measure": measure, "gen": div_gen, "real": div_real},
        "memorisation": {"gen_nn_ssim_median": float(nn_gen.median()),
                         "test_nn_ssim_median": float(nn_test.median()),
                         "gen_nn_ssim_max": float(nn_gen.max())},
        "counts": {"generated": len(gen), "test": len(test), "train_reference": len(f_train)},
    }


TERCILES = ("lowest third", "middle third", "highest third")
LEVEL_ERROR_TARGET = 1.5  # generated level error / the regressor's on real test slices


def tercile(positions) -> np.ndarray:
    """0, 1, 2: the lowest, middle and highest third of a patient's stack."""
    return np.minimum((np.asarray(positions) * 3).astype(int), 2)


def level_block(regressor: Judge, gen: torch.Tensor, requested, test: SliceSet,
                train_ref: SliceSet, pre: dict, k: int) -> dict:
    """Level faithfulness and coverage: the level regressor's error on real test slices and on
    generated slices at their ``requested`` levels (None: a model that takes no level), and
    recall per level third, generated vs a real reference set of the test set's size.

    A generated slice's recall counts toward the third of the real slice it covers, so a
    label-only model is measured the same way; its slices' levels are only predicted.
    """
    real_true = test.positions.numpy()
    real_error = np.abs(regressor.positions(test.pixels) - real_true)
    gen_pred = regressor.positions(gen)
    block = {"regressor_val_error": -regressor.val_accuracy,
             "real_test_error": float(real_error.mean()), "generated_error": None}
    if requested is not None:
        block["generated_error"] = float(np.abs(gen_pred - np.asarray(requested)).mean())
        block["generated_to_real_error"] = block["generated_error"] / max(
            block["real_test_error"], 1e-9)
    gen_flags = recall_per_sample(pre["f_test"], pre["f_gen"], k)
    ref_flags = recall_per_sample(pre["f_test"], pre["f_train"], k,
                                  fake_groups=train_ref.patients)
    real_t, gen_t = tercile(real_true), tercile(gen_pred)
    block["terciles"] = {
        name: {"real_test_slices": int((real_t == i).sum()),
               "recall": float(gen_flags[real_t == i].mean()),
               "real_reference_recall": float(ref_flags[real_t == i].mean()),
               "share_generated_predicted": float((gen_t == i).mean()),
               "share_real": float((real_t == i).mean())}
        for i, name in enumerate(TERCILES) if (real_t == i).any()}
    return block


def closest_pairs_figure(gen: torch.Tensor, values, index, train: SliceSet, path: Path,
                         n: int = 8) -> None:
    """Top row: the generated images most similar to a training image; bottom row: that image."""
    order = values.argsort(descending=True)[:n]
    top = gen[order, 0].numpy()
    bottom = train.pixels[index[order], 0].numpy()
    save_png(grid(np.concatenate([top, bottom]), nrow=len(order)), path)


def inception_fid(gen: torch.Tensor, test: SliceSet, weights: str | None) -> float | None:
    """ImageNet-Inception FID from local weights (torch-fidelity format), else None."""
    if weights is None:
        return None
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights)
    for images, real in ((test.pixels, True), (gen, False)):
        fid.update(images.repeat(1, 3, 1, 1), real=real)
    return float(fid.compute())


def check_inception_weights(weights: str | None) -> None:
    """Before any work: the optional ImageNet-FID needs torch-fidelity and the weights file."""
    if weights is None:
        return
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is None:
        raise UserError("--inception_weights needs the optional package torch-fidelity "
                        "(pip install torch-fidelity); or leave the flag out")
    if not Path(weights).is_file():
        raise UserError(f"--inception_weights {weights} is not a file; give the local "
                        "torch-fidelity Inception weights (.pth)")


def evaluate_generator(sample_fn, data_root, resolution: int, cfg: EvalConfig, out_dir,
                       num_images: int, judge_dir, seed: int = 0,
                       inception_weights: str | None = None, progress: bool = True,
                       sampling: dict | None = None, skip_corrupt: bool = False,
                       reconstruct_fn=None, level_conditioned: bool = False,
                       about: dict | None = None, accelerator=None) -> dict | None:
    """Evaluate ``sample_fn(label, n) -> (n, 1, R, R) uint8`` against the real AD_NC splits.

    ``level_conditioned``: the model takes levels; ``sample_fn(label, n, positions)`` is then
    asked for n slices at levels evenly spaced from 0 to 1, and their level error is measured.
    The level regressor is cached beside the judge, in ``<judge_dir>_level``.
    ``sampling``: the settings the images were made with, recorded in metrics.json.
    ``reconstruct_fn(pixels) -> pixels``: the model's VAE round trip at its resolution, if it has
    one; its sharpness is the reference the generated slices' is compared with.
    ``about``: what was evaluated (e.g. the model folder), first in metrics.json.
    ``accelerator``: the judge, the level regressor and the TSTR/TRTR classifiers run on its
    device; with several processes ``sample_fn`` is expected to gather its own images, the
    features and memorisation searches are split across the processes and gathered, and only
    the main process measures the rest and writes (the others return None).

    Cost: loading is linear in the slices; the judges train a fixed number of steps; features
    are O(G + T) passes (G generated, T <= ``cfg.max_real_images`` test slices); the
    memorisation check is O((G + T) * N_train) pooled-image distances plus O((G + T) * k) SSIM
    pairs (k = ``MEMORISATION_CANDIDATES``); the rest is bounded by G and T.
    """
    check_inception_weights(inception_weights)
    out_dir = check_writable_dir(out_dir, "--out")
    t0 = time.time()
    device = accelerator.device if accelerator is not None else None
    is_main = accelerator is None or accelerator.is_main_process
    train_all = load_split(data_root, "train", resolution, skip_corrupt, progress=progress)
    test = _subset(load_split(data_root, "test", resolution, skip_corrupt, progress=progress),
                   cfg.max_real_images, seed)
    with _main_first(accelerator):  # the main process trains and caches, the others load
        judge, reused = judge_for(train_all, cfg, judge_dir, seed=seed, progress=progress,
                                  device=device)
        regressor, _ = judge_for(train_all, cfg, f"{judge_dir}_level", seed=seed,
                                 progress=progress, target="position", device=device)
    requested = np.linspace(0, 1, num_images) if level_conditioned else None
    gen_parts, label_parts = [], []
    t_sample = time.time()
    for label, name in enumerate(CLASS_NAMES):
        images = sample_fn(name, num_images) if requested is None else \
            sample_fn(name, num_images, requested)
        if is_main:
            save_grid(images[:32, 0].numpy(), out_dir / f"generated_{name}.png", nrow=8)
        gen_parts.append(images)
        label_parts.append(torch.full((len(images),), label))
    gen, gen_labels = torch.cat(gen_parts), torch.cat(label_parts)
    sampling_seconds = time.time() - t_sample
    train_ref = _subset(train_all, len(test), seed + 1)

    def nearest_train(queries):
        return nearest_ssim(queries, train_all.pixels, MEMORISATION_CANDIDATES)

    nn_gen, pair_index = sharded(nearest_train, gen, accelerator)
    pre = {"f_gen": sharded(judge.features, gen, accelerator),
           "f_test": sharded(judge.features, test.pixels, accelerator),
           "f_train": sharded(judge.features, train_ref.pixels, accelerator), "nn_gen": nn_gen,
           "nn_test": sharded(nearest_train, test.pixels, accelerator)[0]}
    if not is_main:
        return None

    def masks(label=None):
        pick = (lambda labels: np.ones(len(labels), dtype=bool)) if label is None else \
            (lambda labels: (labels == label).numpy())
        return pick(gen_labels), pick(test.labels), pick(train_ref.labels)

    metrics = {**(about or {}), **_set_metrics(judge, gen, gen_labels, test, pre, masks(), seed)}
    metrics["per_label"] = {name: _set_metrics(judge, gen, gen_labels, test, pre, masks(label),
                                               seed)
                            for label, name in enumerate(CLASS_NAMES)}
    metrics["levels"] = level_block(
        regressor, gen, None if requested is None else np.tile(requested, len(CLASS_NAMES)),
        test, train_ref, pre, metrics["pr_k"])
    real_same_size = _subset(train_all, len(gen), seed + 2)
    metrics["tstr"] = tstr_accuracy(gen, gen_labels, test, cfg, seed, progress, device)
    metrics["trtr"] = tstr_accuracy(real_same_size.pixels, real_same_size.labels, test, cfg,
                                    seed, progress, device)
    metrics["inception_fid"] = inception_fid(gen, test, inception_weights)
    metrics["sharpness"] = sharpness_block(gen, gen_labels, test, data_root, cfg, seed,
                                           skip_corrupt, progress, reconstruct_fn,
                                           out_dir / "spectrum.png")
    metrics["judge"] = {"val_accuracy": judge.val_accuracy, "reused_from_cache": reused,
                        "dir": str(judge_dir)}
    metrics["num_images_per_label"] = num_images
    metrics["sampling"] = sampling or {}
    metrics["seconds"] = {"sampling": round(sampling_seconds, 1),
                          "total": round(time.time() - t0, 1)}
    closest_pairs_figure(gen, nn_gen, pair_index, train_all, out_dir / "closest_pairs.png")
    write_json(out_dir / "metrics.json", metrics)
    (out_dir / "metrics.md").write_text(metrics_table(metrics))
    return metrics


def _main_first(accelerator):
    """A context in which the main process runs first (then the others), or nothing."""
    from contextlib import nullcontext

    return nullcontext() if accelerator is None else accelerator.main_process_first()


def sharpness_block(gen, gen_labels, test: SliceSet, data_root, cfg: EvalConfig, seed: int,
                    skip_corrupt: bool, progress: bool, reconstruct_fn, plot_path) -> dict:
    """Generated vs real spectra at the native 256x240 (and the VAE's reconstructions').

    The real slices are the same test subset, decoded at the padded native side and cropped, so
    they are the files as they are; generated slices go through the pipeline's own native crop.
    """
    side = max(NATIVE_SIZE)
    real = _subset(load_split(data_root, "test", side, skip_corrupt, progress=progress),
                   cfg.max_real_images, seed)
    if real.files != test.files:
        raise RuntimeError("the native and model-size test subsets differ")

    def native(pixels):
        return np.stack([to_native(p[0].numpy(), NATIVE_SIZE) for p in pixels])

    real_native, gen_native = native(real.pixels), native(gen)
    block = {"all": compare_spectra(gen_native, real_native)}
    for label, name in enumerate(CLASS_NAMES):
        g, r = (gen_labels == label).numpy(), (real.labels == label).numpy()
        block[name] = compare_spectra(gen_native[g], real_native[r])
    curves = {"real test": real_native, "generated": gen_native}
    if reconstruct_fn is not None:
        recon_native = native(reconstruct_fn(test.pixels))
        block["vae_reconstruction"] = compare_spectra(recon_native, real_native)
        curves["VAE reconstructions"] = recon_native
    plot_spectra(plot_path, curves)
    return block


def _defined(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_table(m: dict) -> str:
    """The metrics as a markdown table: generated vs the real-data reference, per label."""
    rows = [("set", m)] + [(name, block) for name, block in m["per_label"].items()]
    lines = ["| metric | " + " | ".join(r[0] if r[0] != "set" else "all" for r in rows)
             + " | real reference |", "|---" * (len(rows) + 2) + "|"]

    def row(title, fn, ref):
        cells = [fn(b) for _, b in rows]
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {ref} |")

    row("Frechet distance (judge features), gen vs test", lambda b: f"{b['fd']['gen_vs_test']:.2f}",
        f"train vs test: {m['fd']['train_vs_test']:.2f}")
    row("precision (k=3)", lambda b: _defined(b["precision"]), "1 = all realistic")
    row("recall (k=3)", lambda b: _defined(b["recall"]), "1 = covers the data")
    row("judge accuracy on generated", lambda b: ", ".join(
        f"{k[4:]} {v:.3f}" for k, v in b["judge_acc"].items() if k.startswith("gen_")),
        f"real test: {m['judge_acc']['real_test']:.3f}")
    row(f"diversity (mean pairwise {m['diversity']['measure']})",
        lambda b: f"{b['diversity']['gen']:.3f}", f"real test: {m['diversity']['real']:.3f}")
    row("median nearest-train SSIM", lambda b: f"{b['memorisation']['gen_nn_ssim_median']:.3f}",
        f"real test: {m['memorisation']['test_nn_ssim_median']:.3f}")
    for name, block in rows:
        if "precision_recall_not_defined" in block:
            lines.append(f"\nPrecision and recall ({'all' if name == 'set' else name}): "
                         f"{block['precision_recall_not_defined']}.")
    lines.append(f"\nTSTR accuracy {m['tstr']:.3f} vs TRTR {m['trtr']:.3f} (same classifier, "
                 f"same number of training images, tested on real test slices).")
    counts = m["counts"]
    if counts["generated"] != counts["test"]:
        lines.append(f"\n{counts['generated']} generated against {counts['test']} real test "
                     f"slices: FD and recall are biased against the smaller set (the floor "
                     f"compares {counts['train_reference']} with {counts['test']}); "
                     f"--num_images {counts['test'] // len(CLASS_NAMES)} compares sets of one "
                     f"size.")
    sharp = m.get("sharpness")
    if sharp:
        bands = list(sharp["all"]["band_energy_ratio"])
        lines.append("\nSharpness at the native 256x240, inside the brain (generated / real "
                     "spectral energy per band of spatial frequency, 1 = as much detail; "
                     "log-spectrum distance, 0 = the same spectrum):\n")
        lines.append("| set | " + " | ".join(f"{b} of Nyquist" for b in bands)
                     + " | log-spectrum distance |")
        lines.append("|---" * (len(bands) + 2) + "|")
        for name, block in sharp.items():
            ratios = " | ".join(f"{block['band_energy_ratio'][b]:.3f}" for b in bands)
            lines.append(f"| {name} | {ratios} | {block['log_spectrum_distance']:.3f} |")
        lines.append("")
    levels = m.get("levels")
    if levels:
        gen_error = levels["generated_error"]
        lines.append("\nSlice level (0 = a patient's lowest slice, 1 = its highest): the level "
                     f"regressor's mean absolute error is {levels['real_test_error']:.3f} on "
                     "real test slices, " + (
                         f"{gen_error:.3f} on generated slices at their requested levels "
                         f"({levels['generated_to_real_error']:.2f}x)." if gen_error is not None
                         else "n/a on generated slices (the model takes no level)."))
        lines.append("\n| level third | real test slices | recall, generated | recall, real "
                     "reference | share of generated (predicted level) | share of real |")
        lines.append("|---|---|---|---|---|---|")
        for name, t in levels["terciles"].items():
            lines.append(f"| {name} | {t['real_test_slices']} | {t['recall']:.3f} | "
                         f"{t['real_reference_recall']:.3f} | "
                         f"{t['share_generated_predicted']:.3f} | {t['share_real']:.3f} |")
        lines.append("")
    fid = m["inception_fid"]
    lines.append("Inception FID: " + (f"{fid:.2f}" if fid is not None else
                                      "skipped (no local Inception weights given)"))
    return "\n".join(lines) + "\n"
