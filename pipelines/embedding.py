"""2-D maps (UMAP or t-SNE) of real and generated slices, with the numbers that say what they show.

Why: a scatter plot of AD and NC slices is the quickest look at whether the classes differ in a
feature space and whether generated slices land among real ones of their class. But a 2-D
embedding can invent clusters or hide them, so every map comes with label measures computed both
in the original feature space and in the map: k-NN label accuracy against chance, silhouette by
label and, for generated slices, how often their nearest real neighbours share their label. The
written interpretation is derived from those numbers by the fixed rules in :func:`interpret`.

Two feature spaces: ``latent`` (the VAE posterior means the diffusion model works in, scaled by
``vae.config.scaling_factor``, as the pipeline's own latents are) and ``judge`` (penultimate
features of the AD/NC classifier of ``pipelines.judge``, trained on the train split and cached).

    python embed.py --model OUT --data ROOT --with_generated 100 --method umap --space latent
"""

from __future__ import annotations

import csv
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import CLASS_NAMES, load_split
from .errors import UserError
from .files import write_json
from .judge import judge_for
from .ldm.latents import encode_posterior
from .metrics import (
    agreement_chance_left_out,
    knn_label_accuracy,
    knn_label_agreement,
    knn_label_share,
    nearest_in_own_group,
    silhouette,
)
from .runs import check_writable_dir
from .sampling import generate, load_pipeline, sampling_settings, saved_config

METHODS = {"umap": "UMAP", "tsne": "t-SNE"}  # --method -> name on the axes
SPACES = ("latent", "judge")
COLOURS = {"NC": "#0072B2", "AD": "#D55E00"}  # Okabe-Ito blue / vermillion: colour-blind safe
K = 10  # neighbours for every k-NN measure
MIN_REAL = 10  # fewest real slices a map is drawn from
PCA_DIMS = 50  # features are standardised, then reduced to this many dimensions before the map
UMAP_NEIGHBOURS, UMAP_MIN_DIST, TSNE_PERPLEXITY = 15, 0.1, 30.0
ENCODE_BATCH = 32  # small batches keep activations in cache on CPUs

# interpretation rules (see interpret): thresholds on the numbers, each a named constant
SEPARATION_WORDS = ((0.5, "clearly"), (0.15, "partly"), (0.0, "barely"),
                    (-np.inf, "no better than chance"))  # on chance-lift
CLUSTER_WORDS = ((0.25, "form distinct clusters"), (0.05, "form overlapping clusters"),
                 (-np.inf, "do not form separate clusters"))  # on silhouette
MAP_TOLERANCE = 0.05  # 2-D vs feature-space k-NN accuracy within this = "keeps"
AGREEMENT_AMONG, AGREEMENT_LEAN = 0.8, 0.3  # share of the real slices' own gain over chance
AGREEMENT_BEYOND = 1.25  # this many times the real slices' gain = more typical than real slices
AGREEMENT_MARGIN = 0.05  # this far above (below) chance = a slight lean to own (other) class
MIN_REAL_GAIN = 0.05  # real slices' own agreement must beat chance by this to judge generated
BY_PATIENT, PATIENT_SHOWS = 0.5, 0.1  # lift over chance of "nearest is its own patient's"
READING_HEADING = "## What the numbers say"  # embedding.md's interpretation starts here


def fmt(value: float | None) -> str:
    """The one number format of the report: the table and the sentences use the same strings."""
    return "n/a" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- checks


def check_options(method: str, space: str, with_generated: int, max_images: int | None) -> None:
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    if space not in SPACES:
        raise UserError(f"unknown --space {space!r}; use one of {', '.join(SPACES)}")
    if with_generated < 0:
        raise UserError(f"--with_generated must be >= 0 (images per label), got {with_generated}")
    if max_images is not None and max_images < MIN_REAL:
        raise UserError(f"--max_images must be at least {MIN_REAL} (a map and its k-NN measures "
                        f"need that many real slices), got {max_images}")


def neighbours_for(n_real: int) -> int:
    """k for the k-NN measures: K, or fewer on a tiny set (a point is not its own neighbour)."""
    return max(1, min(K, n_real - 1))


def check_real(labels: np.ndarray) -> None:
    present = set(labels.tolist())
    if len(labels) < 3 or len(present) < len(CLASS_NAMES):
        raise UserError(f"the embedding needs real slices of both classes and at least 3 in all; "
                        f"got {len(labels)} ({', '.join(CLASS_NAMES[i] for i in sorted(present))})"
                        "; raise --max_images")


# ----------------------------------------------------------------------------- features


def model_resolution(pipe, model_dir) -> int:
    """The side the model was trained at: its saved config, else the pipeline's own."""
    if (Path(model_dir) / "config.yaml").is_file():
        return saved_config(model_dir).data.resolution
    return pipe.resolution


def encode_latents(vae, pixels: torch.Tensor, batch_size: int = ENCODE_BATCH,
                   progress: bool = True) -> np.ndarray:
    """(N, 1, R, R) uint8 -> (N, C*h*w) float32 scaled posterior means, as the pipeline scales."""
    mean, _ = encode_posterior(vae, pixels, batch_size, progress=progress)
    return (mean * vae.config.scaling_factor).flatten(1).numpy()


def real_features(space: str, pipe, pixels: torch.Tensor, judge, progress: bool) -> np.ndarray:
    if space == "latent":
        return encode_latents(pipe.vae, pixels, progress=progress)
    return judge.features(pixels)


def generated_features(space: str, pipe, judge, per_label: int, cfg: Config, seed: int,
                       progress: bool, settings: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_label`` generated slices of each class as features, their labels and names."""
    feats, labels, names = [], [], []
    for label_id, name in enumerate(CLASS_NAMES):
        images = generate(pipe, name, per_label, seed=seed, batch_size=cfg.sample.batch_size,
                          settings=settings, native_size=False, latents=space == "latent",
                          progress=progress)
        if space == "latent":  # the pipeline's latents are already scaled
            feats.append(images.float().flatten(1).cpu().numpy())
        else:  # 8-bit pixels, like the real slices
            feats.append(judge.features(torch.from_numpy(images)[:, None]))
        labels += [label_id] * per_label
        names += [f"generated/{name}_{i:04d}" for i in range(per_label)]
    return np.concatenate(feats).astype(np.float32), np.array(labels), names


# ----------------------------------------------------------------------------- the 2-D map


def reduce_features(feats: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """Standardise each feature, then PCA to ``dims`` dimensions when there are more."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(np.asarray(feats, dtype=np.float32))
    dims = min(dims, *x.shape)
    if x.shape[1] > dims:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    return x


def embed_2d(feats: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by UMAP (McInnes et al. 2018) or t-SNE (van der Maaten & Hinton 2008)."""
    x = reduce_features(feats, seed=seed)
    n = len(x)
    if method == "umap":
        import umap

        # a fixed random_state makes UMAP single-threaded; it says so on every run
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden")
        reducer = umap.UMAP(n_neighbors=min(UMAP_NEIGHBOURS, n - 1), min_dist=UMAP_MIN_DIST,
                            random_state=seed)
    else:
        from sklearn.manifold import TSNE

        reducer = TSNE(n_components=2, perplexity=min(TSNE_PERPLEXITY, (n - 1) / 3), init="pca",
                       learning_rate="auto", random_state=seed)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


# ----------------------------------------------------------------------------- the numbers


def generated_agreement(gen_feats, gen_labels, real_feats, real_labels, k: int,
                        real_groups=None) -> dict:
    """Per label and overall: mean share of a generated point's k nearest real with its label
    (with ``real_groups``, the patient it sits nearest to left out, as a real slice's own is)."""
    out = {}
    for label_id, name in enumerate(CLASS_NAMES):
        mine = gen_labels == label_id
        if mine.any():
            out[name] = knn_label_agreement(gen_feats[mine], gen_labels[mine], real_feats,
                                            real_labels, k, ref_groups=real_groups)
    out["overall"] = knn_label_agreement(gen_feats, gen_labels, real_feats, real_labels, k,
                                         ref_groups=real_groups)
    return out


def label_measures_undefined(labels, groups=None) -> str | None:
    """Why the label measures are not defined for these real slices, or None when they are: they
    need both labels, and with a patient left out each label needs a second patient (else none of
    its slices has a neighbour of its own label, and every number would be a fake 0)."""
    present = sorted(set(np.asarray(labels).tolist()))
    if len(present) < 2:
        return (f"not defined here, because the real slices carry one label only "
                f"({CLASS_NAMES[present[0]] if present else 'none'})")
    if groups is not None:
        groups = np.asarray(groups)
        for label in present:
            if len(set(groups[np.asarray(labels) == label].tolist())) < 2:
                return (f"not defined here, because the real {CLASS_NAMES[label]} slices come "
                        "from one patient: with a slice's own patient left out, none has a "
                        "neighbour of its label")
    return None


def summarise(real_feats, real_labels, real_xy, gen_feats=None, gen_labels=None,
              gen_xy=None, real_groups=None) -> dict:
    """Every number of the report, from features and 2-D coordinates (pure: no models).

    ``real_groups`` (patient ids): the real slices' k-NN accuracy and label agreement then leave
    each slice's whole patient out, so a slice is not judged by its own neighbouring slices, and
    the summary says how often a slice's nearest is its own patient's.
    """
    real_labels = np.asarray(real_labels)
    k = neighbours_for(len(real_labels))
    largest_patient = max(Counter(real_groups).values()) if real_groups is not None else 1
    k = max(1, min(k, len(real_labels) - largest_patient))
    share = {name: float(np.mean(real_labels == i)) for i, name in enumerate(CLASS_NAMES)}
    spaces = {"feature": real_feats, "map": real_xy}
    out = {"k": k, "chance": max(share.values()), "class_share": share,
           "knn_leaves_patient_out": real_groups is not None}
    reason = label_measures_undefined(real_labels, real_groups)
    if reason:
        out["label_measures_not_defined"] = reason
    else:
        out["silhouette"] = {s: silhouette(f, real_labels) for s, f in spaces.items()}
        out["knn_accuracy"] = {s: knn_label_accuracy(f, real_labels, k, groups=real_groups)
                               for s, f in spaces.items()}
    if largest_patient > 1:  # else no patient ids (each slice its own)
        nearest = {s: nearest_in_own_group(f, real_groups) for s, f in spaces.items()}
        out["own_patient_nearest"] = {s: share for s, (share, _) in nearest.items()}
        out["own_patient_chance"] = nearest["feature"][1]
    if gen_feats is not None and len(gen_feats) and not reason:
        gen_labels = np.asarray(gen_labels)
        gen = {"feature": gen_feats, "map": gen_xy}
        out["real_agreement"] = {s: knn_label_share(f, real_labels, k, groups=real_groups)
                                 for s, f in spaces.items()}
        out["real_agreement_chance"] = agreement_chance_left_out(real_labels, real_groups)
        out["generated_agreement"] = {
            s: generated_agreement(gen[s], gen_labels, spaces[s], real_labels, k, real_groups)
            for s in spaces}
        chance = {CLASS_NAMES[i]: share[CLASS_NAMES[i]] for i in sorted(set(gen_labels.tolist()))}
        chance["overall"] = float(np.mean([share[CLASS_NAMES[i]] for i in gen_labels]))
        out["agreement_chance"] = chance
    return out


# ----------------------------------------------------------------------------- interpretation


def _word(value: float, levels) -> str:
    return next(word for threshold, word in levels if value >= threshold)


def _patients(summary: dict, space: str) -> str:
    """What the space is organised by first: patients, or not (slices carry their patient)."""
    share, chance = summary["own_patient_nearest"]["feature"], summary["own_patient_chance"]
    start = (f"In the {space} space, a real slice's nearest other slice is one of its own "
             f"patient's in {fmt(share)} of slices ({fmt(summary['own_patient_nearest']['map'])} "
             f"in the 2-D map; chance {fmt(chance)})")
    lift = (share - chance) / (1 - chance)
    if lift >= BY_PATIENT:
        return (f"{start}: the space is organised by patient (anatomy, contrast, slice level) "
                "before diagnosis (the label measures below leave out a real slice's own "
                "patient, and the patient a generated slice sits nearest to).")
    if lift >= PATIENT_SHOWS:
        return f"{start}: patients show in the space but do not organise it."
    return f"{start}: the space does not group slices by patient."


def _separation(summary: dict, space: str) -> str:
    acc, chance = summary["knn_accuracy"]["feature"], summary["chance"]
    lift = (acc - chance) / (1 - chance)
    return (f"In the {space} space, {summary['k']}-NN label accuracy of real slices is {fmt(acc)} "
            f"against a chance level of {fmt(chance)} (the majority class): the classes separate "
            f"{_word(lift, SEPARATION_WORDS)}"
            + (", each slice judged with its own patient left out." if summary.get(
                "knn_leaves_patient_out") else "."))


def _clusters(summary: dict) -> str:
    sil = summary["silhouette"]["feature"]
    return (f"With a silhouette of {fmt(sil)} by label, AD and NC "
            f"{_word(sil, CLUSTER_WORDS)} in that space.")


def _map_fidelity(summary: dict, method_name: str) -> str:
    acc, acc_map = summary["knn_accuracy"]["feature"], summary["knn_accuracy"]["map"]
    numbers = f"(k-NN accuracy {fmt(acc_map)} in the map vs {fmt(acc)} in the features)"
    if acc_map < acc - MAP_TOLERANCE:
        return (f"The {method_name} map loses label structure {numbers}: the picture understates "
                "how well the classes separate.")
    if acc_map > acc + MAP_TOLERANCE:
        return (f"The {method_name} map shows the classes more separated than the features are "
                f"{numbers}: do not read its clusters as stronger separation.")
    return f"The {method_name} map keeps the label structure of the features {numbers}."


def _agreement(summary: dict, where: str, who: str) -> str:
    """One sentence on generated points of ``who`` (a label or "overall") in ``where``."""
    agree = summary["generated_agreement"][where][who]
    chance = summary["agreement_chance"][who]
    real = summary["real_agreement"][where]
    place = "feature space" if where == "feature" else "2-D map"
    subject = "generated slices" if who == "overall" else f"generated {who} slices"
    own = "real slices of their class" if who == "overall" else f"real {who} slices"
    real_chance = summary["real_agreement_chance"]
    left_out = ", own patient left out" if summary.get("knn_leaves_patient_out") else ""
    theirs = (f"{fmt(agree)} of their {summary['k']} nearest real neighbours share their label, "
              f"chance {fmt(chance)}")
    reals = (f"{fmt(real)} of a real slice's {summary['k']} nearest others share its label"
             f"{left_out}, chance {fmt(real_chance)}")
    numbers = f"{theirs}; {reals}"
    if real - real_chance < MIN_REAL_GAIN:
        return (f"In the {place}, real slices barely group by label ({reals}), so where "
                f"{subject} fall ({theirs}) says little about their label.")
    gain = (agree - chance) / (real - real_chance)
    if gain >= AGREEMENT_BEYOND and agree - real >= AGREEMENT_MARGIN:
        verdict = (f"fall among {own} more consistently than real slices themselves do, more "
                   "typical of their label")
    elif gain >= AGREEMENT_AMONG:
        verdict = f"fall among {own}"
    elif gain >= AGREEMENT_LEAN:
        verdict = f"lean towards {own}, less than real slices do"
    elif agree < chance - AGREEMENT_MARGIN:
        verdict = "sit closer to real slices of the other class"
    elif agree > chance + AGREEMENT_MARGIN:
        verdict = f"lean only slightly towards {own}, far less than real slices do"
    else:
        verdict = f"sit no closer to {own} than chance"
    return f"In the {place}, {subject} {verdict} ({numbers})."


def interpret(summary: dict, space: str, method: str) -> list[str]:
    """The report's sentences, each computed from ``summary`` by the rules above."""
    method_name = METHODS.get(method, method)
    sentences = [_patients(summary, space)] if "own_patient_nearest" in summary else []
    if "label_measures_not_defined" in summary:
        return sentences + [f"The label measures (k-NN accuracy, silhouette, label agreement) are "
                            f"{summary['label_measures_not_defined']}."]
    sentences += [_separation(summary, space), _clusters(summary),
                  _map_fidelity(summary, method_name)]
    if "generated_agreement" in summary:
        labels = [n for n in CLASS_NAMES if n in summary["generated_agreement"]["feature"]]
        sentences += [_agreement(summary, "feature", name) for name in labels]
        sentences.append(_agreement(summary, "map", "overall"))
    return sentences


# ----------------------------------------------------------------------------- writing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_map(fig, ax, path: Path, title: str, axis_name: str) -> None:
    ax.set_xlabel(f"{axis_name}-1")
    ax.set_ylabel(f"{axis_name}-2")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)


def plot_embedding(path: Path, xy: np.ndarray, labels: np.ndarray, generated: np.ndarray,
                   title: str, axis_name: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(7, 6))
    for source, mask_src, style in (
        ("real", ~generated, dict(s=6, marker="o", alpha=0.55, linewidths=0)),
        ("generated", generated, dict(s=46, marker="^", alpha=0.9, edgecolors="black",
                                      linewidths=0.5)),
    ):
        for label_id, name in enumerate(CLASS_NAMES):
            mask = mask_src & (labels == label_id)
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], c=COLOURS[name],
                           label=f"{name} {source} ({int(mask.sum())})", **style)
    ax.legend(loc="best", fontsize=8, markerscale=1.5, framealpha=0.85)
    _save_map(fig, ax, path, title, axis_name)


def plot_levels(path: Path, xy: np.ndarray, levels: np.ndarray, generated: np.ndarray,
                title: str, axis_name: str) -> None:
    """The same map with the real slices coloured by slice level instead of diagnosis: what
    else organises it (a patient's slices in order, one level beside another)."""
    fig, ax = _pyplot().subplots(figsize=(7.6, 6))
    real = ~generated
    points = ax.scatter(xy[real, 0], xy[real, 1], c=levels, cmap="viridis", vmin=0.0, vmax=1.0,
                        s=6, linewidths=0)
    if generated.any():
        ax.scatter(xy[generated, 0], xy[generated, 1], s=46, marker="^", facecolors="none",
                   edgecolors="0.4", linewidths=0.6, label=f"generated ({int(generated.sum())})")
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.colorbar(points, ax=ax, label="slice level (0 = a patient's lowest slice, 1 = its highest)")
    _save_map(fig, ax, path, title, axis_name)


def write_csv(path: Path, xy: np.ndarray, labels: np.ndarray, generated: np.ndarray,
              files: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "label", "source", "file"])
        for (x, y), label, gen, name in zip(xy, labels, generated, files, strict=True):
            writer.writerow([f"{x:.5f}", f"{y:.5f}", CLASS_NAMES[label],
                             "generated" if gen else "real", name])


def markdown_table(record: dict) -> list[str]:
    left_out = " (own patient left out)" if record.get("knn_leaves_patient_out") else ""
    undefined = {"feature": None, "map": None}
    rows = [("k-NN label accuracy of real slices" + left_out,
             record.get("knn_accuracy", undefined)),
            ("silhouette by label, real slices", record.get("silhouette", undefined))]
    if "own_patient_nearest" in record:
        rows.insert(0, ("real slices: nearest other slice is their own patient's (chance "
                        f"{fmt(record['own_patient_chance'])})", record["own_patient_nearest"]))
    if "generated_agreement" in record:
        agree = record["generated_agreement"]
        for who in agree["feature"]:
            name = "all generated" if who == "overall" else f"generated {who}"
            rows.append((f"{name}: share of nearest real with its label ("
                         + ("the patient it sits by left out; " if left_out else "")
                         + f"chance {fmt(record['agreement_chance'][who])})",
                         {s: agree[s][who] for s in ("feature", "map")}))
        rows.append(("real slices: share of nearest other real with their label"
                     + (left_out[:-1] + "; " if left_out else " (")
                     + f"chance {fmt(record['real_agreement_chance'])})",
                     record["real_agreement"]))
    lines = [f"| measure (k = {record['k']}) | {record['space']} features | 2-D map |",
             "|---|---:|---:|"]
    lines += [f"| {name} | {fmt(v['feature'])} | {fmt(v['map'])} |" for name, v in rows]
    if "label_measures_not_defined" in record:
        lines.append(f"\nThe label measures are {record['label_measures_not_defined']}.")
    return lines


def write_markdown(path: Path, record: dict, sentences: list[str]) -> None:
    method_name, counts = METHODS[record["method"]], record["counts"]
    lines = [
        f"# {method_name} of {record['space']} features, {record['split']} split",
        "",
        f"![{method_name} map of real and generated slices]({record['files']['png']})",
        "",
        f"![the same map, real slices coloured by slice level]({record['files']['levels_png']})",
        "",
        f"Real slices: {counts['real']['total']} ("
        + ", ".join(f"{counts['real'][n]} {n}" for n in CLASS_NAMES)
        + f"); generated: {counts['generated']['total']}"
        + (" (" + ", ".join(f"{counts['generated'][n]} {n}" for n in CLASS_NAMES) + ")"
           if counts["generated"]["total"] else "")
        + f". Chance level (majority class among real slices): {fmt(record['chance'])}.",
        "",
        *markdown_table(record),
        "",
        READING_HEADING,
        "",
        *[f"- {s}" for s in sentences],
        "",
    ]
    path.write_text("\n".join(lines))


def _counts(labels: np.ndarray) -> dict:
    out = {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    return out | {"total": int(len(labels))}


# ----------------------------------------------------------------------------- the job


def _timed(seconds: dict, name: str, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    seconds[name] = round(time.perf_counter() - t0, 2)
    return out


def run_embedding(model_dir, data_root, out_dir, *, split: str = "test", method: str | None = None,
                  space: str = "latent", with_generated: int = 0, max_images: int | None = None,
                  seed: int = 0, device: str = "cpu", progress: bool = True,
                  sampling: dict | None = None, skip_corrupt: bool | None = None) -> dict:
    """Encode, (generate,) embed, measure, draw and write the four files; returns the record.

    ``method`` and ``max_images`` default to the model config's ``eval.embed_method`` and
    ``eval.max_real_images``; the sampler, steps and guidance are the model's saved ones, with
    ``sampling`` (flags: scheduler, num_inference_steps, guidance_scale) over them.

    Cost, for N real (at most ``max_images``) and G generated slices: O(N + G) network passes;
    the k-NN label measures are exact, O((N + G)^2) distances in blocks (81M at N = 9,000);
    UMAP and Barnes-Hut t-SNE about (N + G) log(N + G); the silhouette is subsampled.
    """
    cfg = saved_config(model_dir)
    method = method or cfg.eval.embed_method
    max_images = cfg.eval.max_real_images if max_images is None else max_images
    check_options(method, space, with_generated, max_images)
    pipe = load_pipeline(model_dir, device)
    check_writable_dir(out_dir, "--out")
    if space == "latent" and not hasattr(pipe, "vae"):
        raise UserError(f"{model_dir} is a {type(pipe).__name__}: it has no VAE latent space; "
                        "use --space judge")
    settings = sampling_settings(pipe, **(sampling or {}))
    resolution = model_resolution(pipe, model_dir)
    skip = cfg.data.skip_corrupt if skip_corrupt is None else skip_corrupt
    real = load_split(data_root, split, resolution, skip, progress, max_images)
    real_labels = real.labels.numpy()
    check_real(real_labels)
    judge = None
    if space == "judge":
        train = load_split(data_root, "train", resolution, skip, progress)
        judge, _ = judge_for(train, cfg.eval, Path(model_dir) / "judge", progress=progress)
    seconds = {}
    feats = _timed(seconds, "encode", real_features, space, pipe, real.pixels, judge, progress)
    gen_feats, gen_labels, gen_files = np.zeros((0, feats.shape[1]), np.float32), np.zeros(0), []
    if with_generated:
        gen_feats, gen_labels, gen_files = _timed(seconds, "generate", generated_features, space,
                                                  pipe, judge, with_generated, cfg, seed, progress,
                                                  settings)
    gen_labels = gen_labels.astype(int)
    xy = _timed(seconds, "embed", embed_2d, np.concatenate([feats, gen_feats]), method, seed)
    n = len(feats)
    summary = _timed(seconds, "measure", summarise, feats, real_labels, xy[:n], gen_feats,
                     gen_labels, xy[n:], real.patients)
    record = {"method": method, "space": space, "split": split, "model": str(model_dir),
              "data": str(data_root), "seed": seed, "feature_dim": int(feats.shape[1]),
              "counts": {"real": _counts(real_labels), "generated": _counts(gen_labels)},
              **summary,
              "files": {"png": "embedding.png", "levels_png": "embedding_levels.png",
                        "csv": "embedding.csv", "json": "embedding.json", "md": "embedding.md"}}
    if with_generated:
        record["sampling"] = settings
    record["seconds"] = seconds
    write_outputs(Path(out_dir), record, xy, np.concatenate([real_labels, gen_labels]),
                  real.files + gen_files, n, real.positions.numpy())
    return record


def write_outputs(out_dir: Path, record: dict, xy: np.ndarray, labels: np.ndarray,
                  files: list[str], n_real: int, real_levels: np.ndarray) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = np.arange(len(labels)) >= n_real
    counts = record["counts"]
    method_name = METHODS[record["method"]]
    def title(by: str = "") -> str:
        return (f"{method_name} of {record['space']} features{by}, {record['split']} split: "
                f"{counts['real']['total']} real + {counts['generated']['total']} generated")

    plot_embedding(out_dir / record["files"]["png"], xy, labels, generated, title(), method_name)
    plot_levels(out_dir / record["files"]["levels_png"], xy, real_levels, generated,
                title(" by slice level"), method_name)
    write_csv(out_dir / record["files"]["csv"], xy, labels, generated, files)
    write_json(out_dir / record["files"]["json"], record)
    write_markdown(out_dir / record["files"]["md"], record, interpret(record, record["space"],
                                                                      record["method"]))
