"""Counterfactual edits measured against the truth: the stand-in set's paired renderings.

No real patient has both an AD and an NC scan, but the stand-in generator can render a test patient
again at the other class's severity (``tools.phantom --counterfactuals K``, in
``DATA/counterfactual/``; by default at the same rank in the other class's severity distribution,
the rule recorded with the scores). Per direction (NC->AD, AD->NC) this module scores the model's
edit, the other edit method at the same strength, and adding the training set's mean AD-minus-NC
image, with the source itself (and its VAE reconstruction) as the reference a useful edit must
beat:

- flip rate: the judge calls the result the target label (p > 0.5);
- closeness to the truth: SSIM and mean absolute error (grey levels, inside the brain) to the true
  counterfactual, and the share of slices closer to it than the source is;
- localisation: ROC-AUC of |result - source| against the truly changed pixels (|truth - source|
  above CHANGED_LEVEL grey levels, inside the brain), pooled over the direction's slices;
- identity: SSIM to the source over the brain outside the truly changed pixels;
- the null edit (target = the source's own label): its mean absolute change in the brain.

One more reference row reads the flip rate: the truth drawn at the edit's size (per slice, the
source plus the edit's least-squares size along the true change times that change). An edit that
knows only part of where atrophy acts comes closest to the truth when drawn fainter than it (an
estimate correlated rho with the truth is closest at about rho^2 of its size along it), and a
faint truth is called the target less often than the truth: if the edit flips about as often as
this row, it flips as its size allows, and what is missing is the knowledge of where, not gain.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import counterfactual_axioms as axioms
from .counterfactual import (
    Source,
    brain_mask,
    describe_edit,
    judge_target_probability,
    make_editor,
    masked_mean,
    read_source,
    run_edits,
)
from .data import (
    CLASS_NAMES,
    COUNTERFACTUAL_DIR,
    PAIRS_MANIFEST,
    decode_slice,
    patient_id,
    scan,
    spread_indices,
)
from .errors import UserError
from .files import write_json, write_text
from .ldm.pipeline_adni import DEFAULT_DRAWS, DEFAULT_REFINE, EDIT_DEFAULTS, EDIT_METHODS
from .metrics import ssim_maps
from .plots import grid, save_png
from .runs import prepare_output_dir

CHANGED_LEVEL = 20  # grey levels: |truth - source| above this is a truly changed pixel
NULL_ROW = "null edit (target = source label)"
SCALED_TRUTH_ROW = "truth at the edit's size"
RESAMPLES = 2000  # patient resamples behind each 95 % interval
ROW_NAMES = {"flip_rate": "flip rate", "ssim_to_truth": "SSIM to truth",
             "mae_to_truth": "MAE to truth", "closer_than_source": "closer than source",
             "localisation_auc": "localisation AUC", "identity_ssim": "identity SSIM",
             "mean_abs_change_in_brain": "mean change in brain"}
INTERVAL_NAMES = {**{k: ROW_NAMES[k] for k in ("flip_rate", "closer_than_source")},
                  "mae_below_source": "MAE to truth below the source's (grey levels)"}


def read_pairs(root, per_direction: int | None = None) -> dict[str, tuple[list[Source],
                                                                          np.ndarray]]:
    """{"NC->AD": (sources, truths (N, H, W) uint8), "AD->NC": ...} from DATA/counterfactual/;
    ``per_direction``: that many slices spread over each direction's pairs (default: all)."""
    root = Path(root)
    path = root / COUNTERFACTUAL_DIR / PAIRS_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is missing or unreadable: --evaluate needs the paired truth; "
                        f"write it with python -m tools.phantom --out {root} "
                        "--counterfactuals 3 (and the set's own counts and seed)") from None
    pairs: dict[str, tuple[list[Source], list[np.ndarray]]] = {}
    for record in manifest["patients"]:
        sources, truths = pairs.setdefault(f"{record['label']}->{record['target']}", ([], []))
        for name in record["files"]:
            sources.append(read_source(root / record["source"] / name, record["label"]))
            with Image.open(root / record["folder"] / name) as image:
                truths.append(decode_slice(image)[0])
    picked = {key: spread_indices(len(sources), per_direction or len(sources))
              for key, (sources, _) in pairs.items()}
    return {key: ([sources[i] for i in picked[key]], np.stack([truths[i] for i in picked[key]]))
            for key, (sources, truths) in sorted(pairs.items())}


def pairs_rule(root) -> str:
    """How the truth's severities were chosen (``tools.phantom --counterfactual_rule``); sets
    written before the rule existed used the other class's mean, ``typical``."""
    manifest = json.loads((Path(root) / COUNTERFACTUAL_DIR / PAIRS_MANIFEST).read_text())
    return manifest.get("counterfactual_rule", "typical")


def mean_class_difference(root) -> np.ndarray:
    """(H, W) float: the mean AD slice minus the mean NC slice of the train split (native size)."""
    sums = {}
    for f in scan(root, splits=("train",)).files:
        with Image.open(f.path) as image:
            pixels = decode_slice(image)[0].astype(np.float64)
        total, count = sums.get(f.label, (0.0, 0))
        sums[f.label] = (total + pixels, count + 1)
    ad, nc = (sums[CLASS_NAMES.index(n)][0] / sums[CLASS_NAMES.index(n)][1] for n in ("AD", "NC"))
    return ad - nc


def _roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def pair_brain(sources: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """Where either the source or its truth has brain: the region every number is taken over,
    the same for every candidate of a direction (so computed once per direction)."""
    return brain_mask(sources) | brain_mask(truths)


def mae_to_truth(images: np.ndarray, truths: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per slice: the mean absolute error of ``images`` to the truth, grey levels inside
    ``brain``."""
    return axioms.mean_abs_difference(images, truths, brain)


def truth_at_size(sources: np.ndarray, truths: np.ndarray, edits: np.ndarray,
                  brain: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8: each source plus its true change times the edit's least-squares size
    along it inside ``brain`` (0 where the edit does not point along the truth at all)."""
    out = []
    for src, truth, edit, mask in zip(sources.astype(np.float64), truths.astype(np.float64),
                                      edits.astype(np.float64), brain, strict=True):
        true_change, change = (truth - src)[mask], (edit - src)[mask]
        power = float(true_change @ true_change)
        size = max(0.0, float(change @ true_change) / power) if power > 0 else 0.0
        out.append(np.clip(np.rint(src + size * (truth - src)), 0, 255).astype(np.uint8))
    return np.stack(out)


def patient_slices(sources: list[Source]) -> dict[str, list[int]]:
    """{pair patient: the indices of its slices in ``sources``}."""
    groups: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        groups.setdefault(patient_id(source.path.name), []).append(i)
    return groups


def closer_by_patient(closer: np.ndarray, sources: list[Source]) -> dict[str, float]:
    """The share of each pair patient's slices closer to the truth than the source (``closer``:
    one flag per slice): with a few patients per direction, "closer" is set patient by patient."""
    closer = np.asarray(closer, dtype=bool)
    return {pid: round(float(closer[idx].mean()), 3)
            for pid, idx in sorted(patient_slices(sources).items())}


def patient_interval(values, sources: list[Source], resamples: int = RESAMPLES,
                     seed: int = 0) -> list[float]:
    """The 95 % interval of the mean of per-slice ``values`` over another draw of pair patients:
    patients resampled with replacement (a cluster bootstrap). The patients, not the slices, are
    the independent units: a patient's slices share one anatomy and severity, and whether an
    edit comes closer than the source is decided patient by patient ("The truth by rank")."""
    values = np.asarray(values, dtype=np.float64)
    groups = patient_slices(sources)
    known = ~np.isnan(values)  # a slice without brain has no error to the truth
    sums = np.array([values[idx][known[idx]].sum() for idx in groups.values()])
    counts = np.array([known[idx].sum() for idx in groups.values()])
    picks = np.random.default_rng(seed).integers(0, len(groups), (resamples, len(groups)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    return [round(float(q), 4) for q in np.percentile(means, [2.5, 97.5])]


def slice_scores(result: np.ndarray, truths: np.ndarray, targets, judge,
                 brain: np.ndarray) -> dict[str, np.ndarray]:
    """Per slice of one candidate: whether the judge calls it the target ("flipped") and its
    MAE to the truth ("mae"): what its rates and the edit's intervals over patients are of."""
    return {"flipped": judge_target_probability(judge, result.astype(np.uint8), targets) > 0.5,
            "mae": mae_to_truth(result, truths, brain)}


def score(result: np.ndarray, sources: np.ndarray, truths: np.ndarray, brain: np.ndarray,
          source_mae: np.ndarray, slices: dict[str, np.ndarray]) -> dict:
    """Every number of one candidate in one direction (see the module docstring), ``slices``
    its :func:`slice_scores`; ``brain`` (:func:`pair_brain`) and ``source_mae`` (the sources'
    :func:`mae_to_truth`) are the direction's, the same for every candidate."""
    mae = slices["mae"]
    result, src, truth = (x.astype(np.float64) for x in (result, sources, truths))
    changed = (np.abs(truth - src) > CHANGED_LEVEL) & brain
    ssim_truth = ssim_maps(torch.from_numpy(result.astype(np.uint8))[:, None],
                           torch.from_numpy(truths)[:, None]).numpy()
    ssim_source = ssim_maps(torch.from_numpy(result.astype(np.uint8))[:, None],
                            torch.from_numpy(sources)[:, None]).numpy()
    kept = brain & ~changed
    return {
        "flip_rate": float(slices["flipped"].mean()),
        "ssim_to_truth": float(ssim_truth.mean()),
        "mae_to_truth": float(np.nanmean(mae)),
        "closer_than_source": float((mae < source_mae).mean()),
        "localisation_auc": _roc_auc(np.abs(result - src)[brain], changed[brain]),
        "identity_ssim": float(np.mean([masked_mean(q, k) for q, k in zip(ssim_source, kept,
                                                                           strict=True)])),
        "mean_abs_change_in_brain": float(np.mean([masked_mean(np.abs(r - s), b) for r, s, b
                                                   in zip(result, src, brain, strict=True)])),
    }


def reconstructions(editor, sources: list[Source], batch_size: int) -> np.ndarray:
    """(N, H, W) uint8: each source through the VAE and back, at the native size."""
    outs = []
    for start in range(0, len(sources), batch_size):
        latents = editor.encode([s.pixels for s in sources[start : start + batch_size]])
        outs.append(editor.postprocess(editor.decode_latents(latents), "np")[..., 0])
    return np.rint(np.concatenate(outs) * 255).astype(np.uint8)


def axiom_scores(editor, sources: list[Source], targets: list[int], edit: np.ndarray,
                 null: np.ndarray, truths: np.ndarray, brain: np.ndarray, rows: dict,
                 **edit_kwargs) -> dict:
    """Monteiro et al.'s measures of one direction's ``edit`` (:mod:`counterfactual_axioms`):
    the share of the true change explained and the change's correlation with it (each with its
    95 % interval over patients), the size ratio, the flip target, minimality, reversibility
    (the edit edited back), composition (``null``, the null edit, applied again up to 5 times)
    and the CSF area's change per patient against the truth's."""
    src = np.stack([s.pixels for s in sources])
    own = [s.label for s in sources]
    share = axioms.share_explained(edit, src, truths, brain)
    corr = axioms.change_correlation(edit, src, truths, brain)
    changed = (np.abs(truths.astype(np.float64) - src) > CHANGED_LEVEL) & brain

    def again(images: np.ndarray, labels: list[int], to: list[int]) -> np.ndarray:
        edited = [replace(s, pixels=p, label=label, note=None)
                  for s, p, label in zip(sources, images, labels, strict=True)]
        return run_edits(editor, edited, to, **edit_kwargs)

    one_way = axioms.drift(edit, src, brain)
    round_trip = axioms.drift(again(edit, targets, own), src, brain)
    drifts, inputs, composed = {}, src, null  # composed: the null edit applied m times
    for m in range(1, 6):
        # an edit is deterministic (per-slice seeds): once the null edit returns its input
        # exactly, that is a fixed point and further applications change nothing
        if m > 1 and not np.array_equal(composed, inputs):
            inputs, composed = composed, again(composed, own, own)
        if m in (1, 2, 5):
            drifts[str(m)] = round(axioms.drift(composed, src, brain), 4)
    flips = {name: rows[name]["flip_rate"] for name in ("truth", SCALED_TRUTH_ROW)}
    edit_flip = rows[f"edit ({edit_kwargs['method']})"]["flip_rate"]
    return {
        "share_explained": round(float(np.nanmean(share)), 4),
        "share_explained_interval": patient_interval(share, sources),
        "change_correlation": round(float(np.nanmean(corr)), 4),
        "change_correlation_interval": patient_interval(corr, sources),
        "magnitude_ratio": round(axioms.magnitude_ratio(edit, src, truths, brain), 4),
        "flip": {"edit": edit_flip, "truth": flips["truth"],
                 "truth_at_size": flips[SCALED_TRUTH_ROW],
                 "met": axioms.flip_verdict(edit_flip, flips["truth"], flips[SCALED_TRUTH_ROW])},
        "minimality": {k: round(v, 4) for k, v in
                       axioms.outside_change(edit, src, changed, brain).items()},
        "reversibility": {"one_way": round(one_way, 4), "round_trip": round(round_trip, 4),
                          "ratio": round(one_way / round_trip, 2) if round_trip > 0 else None},
        "composition": {"drift": drifts, "share_of_one_way":
                        round(drifts["5"] / one_way, 4) if one_way > 0 else None},
        "csf_area": axioms.csf_agreement(edit, src, truths, brain,
                                         [patient_id(s.path.name) for s in sources]),
    }


def axiom_table(block: dict) -> list[str]:
    """One direction's axioms as markdown lines, each beside its target."""
    a = block["axioms"]

    def interval(key):
        lo, hi = a[f"{key}_interval"]
        return f"{a[key]:.3f} (95 % over patients {lo:.3f} to {hi:.3f})"

    rev, comp, csf, flip = a["reversibility"], a["composition"], a["csf_area"], a["flip"]
    ratio = "not defined (the round trip returned exactly)" if rev["ratio"] is None \
        else f"{rev['ratio']:.2f}x"
    share5 = "n/a" if comp["share_of_one_way"] is None else f"{comp['share_of_one_way']:.3f}"
    csf_corr = csf["not_defined"] if csf["correlation"] is None else f"{csf['correlation']:.3f}"
    csf_slope = "n/a" if csf["slope"] is None else f"{csf['slope']:.3f}"
    return [
        "| measure | value | target |", "|---|---|---|",
        f"| share of the true change explained | {interval('share_explained')} | >= "
        f"{axioms.SHARE_TARGET} (interval's low end > {axioms.SHARE_LOW_TARGET}) |",
        f"| correlation of the edit's change with the true change | "
        f"{interval('change_correlation')} | >= {axioms.CORRELATION_TARGET} |",
        f"| the edit's change / the true change (size) | {a['magnitude_ratio']:.3f} | |",
        f"| flip rate: edit / truth / truth at the edit's size | {flip['edit']:.3f} / "
        f"{flip['truth']:.3f} / {flip['truth_at_size']:.3f} | >= the truth at the edit's size "
        f"and >= {axioms.FLIP_OF_TRUTH} x the truth: {'met' if flip['met'] else 'missed'} |",
        f"| minimality: change outside / inside the truly changed pixels (grey levels); share "
        f"outside | {a['minimality']['outside']:.2f} / {a['minimality']['inside']:.2f}; "
        f"{a['minimality']['share_outside']:.3f} | |",
        f"| reversibility: one-way change / distance back after the round trip | "
        f"{rev['one_way']:.2f} / {rev['round_trip']:.2f} = {ratio} | >= "
        f"{axioms.REVERSIBILITY_TARGET:.0f}x |",
        "| composition: drift after 1, 2, 5 null edits (grey levels); 5 over the one-way "
        f"change | {', '.join(f'{v:.3f}' for v in comp['drift'].values())}; {share5} | < "
        f"{axioms.COMPOSITION_TARGET} |",
        f"| CSF area change per patient, edit against truth: correlation; slope | {csf_corr}; "
        f"{csf_slope} | |",
    ]


def baseline_settings(method: str, strength: float, guidance_scale: float) -> dict:
    """{other method: (strength, guidance)} to score beside ``method``: the other sampled method
    at the same strength and guidance (a like-for-like baseline), the posterior method
    against the others at their own measured defaults (EDIT_DEFAULTS) and they against it."""
    def own(m):
        return EDIT_DEFAULTS[m]["strength"], EDIT_DEFAULTS[m]["guidance_scale"]

    return {m: (strength, guidance_scale) if "posterior" not in (m, method) else own(m)
            for m in EDIT_METHODS if m != method}


def evaluate_edits(pipe, judge, pairs: dict, data_root, out_dir, *, settings: dict,
                   strength: float, method: str, seed: int, batch_size: int,
                   change_from: str = "null_edit", refine: str = DEFAULT_REFINE,
                   num_draws: int = DEFAULT_DRAWS, record: dict | None = None) -> dict:
    """Score the edit, its baselines and the null edit against the paired truth (``pairs``:
    :func:`read_pairs` of ``data_root``); writes
    OUT/truth.json, OUT/truth.md and OUT/truth_panel.png (source | edit | truth | their
    changes); returns the truth.json record."""
    t0 = time.time()
    out_dir = prepare_output_dir(out_dir, "truth.json")
    mean_diff = mean_class_difference(data_root)
    editor = make_editor(pipe)
    others = baseline_settings(method, strength, settings["guidance_scale"])
    common = {"num_inference_steps": settings["num_inference_steps"], "seed": seed,
              "batch_size": batch_size, "refine": refine, "num_draws": num_draws,
              "progress": False}
    kwargs = {**common, "strength": strength, "guidance_scale": settings["guidance_scale"],
              "change_from": change_from}
    record = {**(record or {}), "method": method, "strength": strength,
              "change_from": change_from, "refine": refine,
              **({"num_draws": num_draws} if method == "posterior" else {}), **settings,
              "baselines": {m: {"strength": st, "guidance_scale": g}
                            for m, (st, g) in others.items()},
              "changed_level": CHANGED_LEVEL, "truth_rule": pairs_rule(data_root),
              "directions": {}}
    panel_rows = []
    for direction, (sources, truths) in pairs.items():
        targets = [CLASS_NAMES.index(direction.split("->")[1])] * len(sources)
        src = np.stack([s.pixels for s in sources])
        sign = 1.0 if direction.endswith("AD") else -1.0
        own = [s.label for s in sources]
        brain = pair_brain(src, truths)
        edit_row = f"edit ({method})"
        edit = run_edits(editor, sources, targets, method=method, **kwargs)
        candidates = {
            edit_row: edit,
            **{f"baseline: {m}": run_edits(
                editor, sources, targets, method=m, strength=st, guidance_scale=g, **common,
                change_from="null_edit" if m == "posterior" else change_from)
               for m, (st, g) in others.items()},
            "baseline: + mean AD-NC image": np.clip(src + sign * mean_diff + 0.5, 0,
                                                   255).astype(np.uint8),
            "source": src,
            "VAE reconstruction": reconstructions(editor, sources, batch_size),
            "truth": truths,
            SCALED_TRUTH_ROW: truth_at_size(src, truths, edit, brain),
            NULL_ROW: run_edits(editor, sources, own, method=method, **kwargs),
        }
        source_mae = mae_to_truth(src, truths, brain)
        slices = {name: slice_scores(result, truths, own if name == NULL_ROW else targets, judge,
                                     brain) for name, result in candidates.items()}
        rows = {name: score(result, src, truths, brain, source_mae, slices[name])
                for name, result in candidates.items()}
        edit_slices = slices[edit_row]
        closer = edit_slices["mae"] < source_mae
        per_slice = {"flip_rate": edit_slices["flipped"], "closer_than_source": closer,
                     "mae_below_source": source_mae - edit_slices["mae"]}  # paired: tighter
        record["directions"][direction] = {
            "slices": len(sources), "rows": rows,
            "axioms": axiom_scores(editor, sources, targets, edit, candidates[NULL_ROW], truths,
                                   brain, rows, method=method, **kwargs),
            "edit_closer_by_patient": closer_by_patient(closer, sources),
            "edit_intervals": {name: patient_interval(values, sources)
                               for name, values in per_slice.items()}}
        middle = len(sources) // 2
        panel_rows.append(_panel_row(src[middle], edit[middle], truths[middle]))
    record["seconds"] = round(time.time() - t0, 1)
    write_json(out_dir / "truth.json", record)
    write_text(out_dir / "truth.md", truth_table(record))
    save_png(grid(np.concatenate(panel_rows), nrow=5), out_dir / "truth_panel.png")
    return record


def _panel_row(source, edit, truth) -> np.ndarray:
    """Source, edit, truth, edit - source and truth - source (mid grey = no change, +-64)."""
    def change(x):
        return np.clip(128 + 2 * (x.astype(float) - source), 0, 255).astype(np.uint8)

    return np.stack([source, edit, truth, change(edit), change(truth)])


def truth_table(record: dict) -> str:
    """truth.json as markdown: one table per direction."""
    settings = {k: record[k] for k in ("guidance_scale", "num_inference_steps")}
    draws = record.get("num_draws", DEFAULT_DRAWS)
    edit = describe_edit(record["method"], record["strength"], settings, draws)
    baselines = "; ".join(describe_edit(m, b["strength"], {**settings, **b}, draws)
                          for m, b in record.get("baselines", {}).items())
    lines = [f"Edit: {edit}, change from {record['change_from']}, refined "
             f"{record.get('refine', 'none')}" + (f". Baselines: {baselines}" if baselines
                                                   else "") + ". MAE "
             "and change in grey levels inside the brain; truly changed pixels: |truth - source| "
             f"> {record['changed_level']}; the truth's severities by the "
             f"{record.get('truth_rule', 'typical')} rule.", ""]
    for direction, block in record["directions"].items():
        lines += [f"**{direction}** ({block['slices']} slices)", "",
                  "| | " + " | ".join(ROW_NAMES.values()) + " |",
                  "|---" * (len(ROW_NAMES) + 1) + "|"]
        for name, row in block["rows"].items():
            cells = [f"{row[k]:.3f}" if row[k] == row[k] else "n/a" for k in ROW_NAMES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        intervals = block.get("edit_intervals")
        if intervals:
            lines += ["", f"The edit's 95 % intervals over another draw of these "
                      f"{len(block.get('edit_closer_by_patient', {}))} patients (resampled "
                      f"{RESAMPLES} times): " + ", ".join(
                          f"{INTERVAL_NAMES.get(k, k)} {lo:.3f} to {hi:.3f}"
                          for k, (lo, hi) in intervals.items())
                      + "."]
        if "axioms" in block:
            lines += ["", f"Axioms of the edit ({direction}):", "", *axiom_table(block)]
        by_patient = block.get("edit_closer_by_patient", {})
        if by_patient:
            lines += ["", "The edit closer than the source, per patient: " + ", ".join(
                f"{pid} {share:.2f}" for pid, share in by_patient.items()) + "."]
        lines.append("")
    return "\n".join(lines)
