"""The browser app over a trained model folder: generate, edit a slice, the map, the model card.

Why Gradio: it is how people who use Hugging Face models expect to try one (every Space is a
Gradio app), and it gives the queue, progress bars and error messages in the page. The app serves
on 127.0.0.1 only. All requests share one pipeline, whose scheduler a request may swap, so the
queue runs one request at a time: two browsers generating at once each wait their turn and get
their own images. The work itself is done by the same functions as the command-line scripts
(``sampling.generate``, ``embedding.run_embedding``, the judge), so the app shows what they show.

    python app.py --model outputs/demo/model --data data/phantom     # then open the printed URL
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from .counterfactual import (
    DEFAULT_GUIDANCE,
    DEFAULT_METHOD,
    DEFAULT_STRENGTH,
    as_source,
    describe_edit,
    edit_to_folder,
)
from .counterfactual_eval import SCALED_TRUTH_ROW
from .data import load_split, read_slice_file, scan
from .embedding import run_embedding
from .errors import UserError, write_trace
from .files import write_json
from .judge import JUDGE_FILE, Judge, judge_for
from .ldm.pipeline_adni import EDIT_METHODS, SCHEDULERS
from .plots import save_png
from .sampling import generate, load_pipeline, sampling_settings, saved_config, takes_levels
from .slices import CLASS_NAMES, NATIVE_SIZE, to_model_input, to_native

BOTH = "both"
MAX_IMAGES = 16  # per label and request: 32 images at 20 steps are ~1 min on 2 CPU cores
MAX_UPLOAD_MB = 5  # Gradio refuses larger uploads before they reach the app
MAX_UPLOAD_PIXELS = 2048 * 2048  # a slice is 256x240; anything this big is not one
KEEP_REQUESTS = 32  # per-request folders of PNGs kept for download, oldest removed first
MAP_GENERATED = 100  # generated slices per label placed on the map (as `make demo` does)

COUNTERFACTUAL_NOTE = (
    "Pick or upload a slice to read it as the model does (conversion, native size, the judge's "
    "AD/NC probabilities), then **Edit** it towards the other label: `edit.py` on one slice "
    "(VAE, noise at levels up to the strength, then the difference of the denoiser's "
    "predictions under the two labels; or inversion / SDEdit and guided denoising). The "
    "difference map is where this model puts the change between AD and NC for this brain; "
    "how close such edits come to a true counterfactual is measured on the stand-in data "
    "(`edit.py --evaluate`) and shown below when the model has been scored. It is not a "
    "prediction for a patient.")
EDIT_TARGETS = ("the other label", *CLASS_NAMES)


AppError = UserError  # a mistake shown in the page is the same thing the scripts print


def shown_in_page(fn):
    """Turn a function's failures into readable page messages: the user's mistakes as they are,
    anything unexpected as one line naming the trace file. The server keeps serving either way."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as err:  # a bug: one line in the page, the trace in a file
            trace = write_trace(err)
            raise gr.Error(f"unexpected {type(err).__name__}: {err} (full trace in {trace})",
                           print_exception=False) from None

    return wrapper


# ----------------------------------------------------------------------------- checks


def whole_number(value, name: str, low: int, high: int | None = None) -> int:
    """A page field as an int in [low, high], or a message naming the field and the range."""
    span = f"from {low} to {high}" if high is not None else f"{low} or more"
    if value is None or value == "":
        raise AppError(f"{name} is empty; enter a whole number {span}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be a whole number {span}, got {value!r}") from None
    if not number.is_integer() or number < low or (high is not None and number > high):
        raise AppError(f"{name} must be a whole number {span}, got {value:g}")
    return int(number)


def read_upload(path: str | Path) -> tuple[np.ndarray, str | None]:
    """An uploaded file -> (H, W) uint8 grey slice and the conversion done, or a message."""
    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_MB * 2**20:
        raise AppError(f"{path.name} is larger than {MAX_UPLOAD_MB} MB; upload one slice as a "
                       "PNG or JPEG")
    return read_slice_file(path, path.name, MAX_UPLOAD_PIXELS)


# ----------------------------------------------------------------------------- the model


class AppSession:
    """What every request reads: the pipeline, its saved settings, the data folder, the judge."""

    def __init__(self, model_dir: str | Path, data_dir: str | Path | None = None,
                 device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.data_dir = Path(data_dir) if data_dir else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise UserError(f"--data {self.data_dir} is not a folder; pass the AD_NC folder "
                            "(train/ test/), or leave --data out to run without data")
        self.pipe = load_pipeline(self.model_dir, device)
        self.cfg = saved_config(self.model_dir)
        self.saved = sampling_settings(self.pipe)  # {} for a GAN
        self.max_steps = (int(self.pipe.scheduler.config.num_train_timesteps) if self.saved
                          else None)
        self._work = tempfile.TemporaryDirectory(prefix="adni-app-")  # removed with the session
        self.work_dir = Path(self._work.name)  # or at exit, so no run leaves its files in /tmp
        self._judge: Judge | None = None
        self._judge_lock = threading.Lock()
        self._requests = 0

    @property
    def kind(self) -> str:
        return type(self.pipe).__name__

    def test_slices(self) -> list[str]:
        """The test split's files (relative paths), for the slice picker; [] without data."""
        if self.data_dir is None:
            return []
        return sorted(f.relpath for f in scan(self.data_dir, splits=("test",)).files)

    def request_dir(self) -> Path:
        """A fresh folder for one request's files; the oldest beyond KEEP_REQUESTS are removed."""
        self._requests += 1
        folder = self.work_dir / f"request_{self._requests:06d}"
        folder.mkdir()
        old = sorted(self.work_dir.glob("request_*"))[:-KEEP_REQUESTS]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return folder

    def judge(self, progress=None) -> Judge:
        """The model's judge: the one evaluate.py cached in MODEL/judge, else trained on DATA."""
        with self._judge_lock:
            if self._judge is None:
                cache = self.model_dir / "judge"
                if (cache / JUDGE_FILE).is_file():
                    self._judge = Judge.load(cache)
                elif self.data_dir is None:
                    raise AppError(f"no judge in {cache} and no data to train one: run "
                                   "evaluate.py on the model, or start the app with --data")
                else:
                    if progress is not None:
                        progress(0, desc="training the judge on the train split (once)")
                    train = load_split(self.data_dir, "train", self.cfg.data.resolution,
                                       self.cfg.data.skip_corrupt, progress=False)
                    self._judge, _ = judge_for(train, self.cfg.eval, cache, progress=False)
            return self._judge


# ----------------------------------------------------------------------------- Generate


def generate_images(session: AppSession, label: str, num_images, guidance_scale,
                    num_inference_steps, scheduler: str | None, seed, slice_position=None,
                    progress=None):
    """The Generate tab: (gallery items, settings text, zip of the PNGs).

    The images are those ``sample.py --label L --num_images N --seed S [--slice_position P]``
    writes with the same settings: the same ``generate`` call with per-image seeds.
    ``slice_position``: a level-conditioned model's level, or empty for a random one per image.
    """
    if label not in (*CLASS_NAMES, BOTH):
        raise AppError(f"unknown label {label!r}; choose {', '.join(CLASS_NAMES)} or {BOTH}")
    labels = list(CLASS_NAMES) if label == BOTH else [label]
    n = whole_number(num_images, "Images per label", 1, MAX_IMAGES)
    seed = whole_number(seed, "Seed", 0, 2**63 - 1)
    overrides = {}
    if session.saved:  # a diffusion model: its sampler, steps and guidance can change
        overrides = {"scheduler": scheduler or session.saved["scheduler"],
                     "num_inference_steps": whole_number(num_inference_steps, "Steps", 1,
                                                         session.max_steps),
                     "guidance_scale": guidance(guidance_scale)}
    level = slice_level(session, slice_position)
    settings = sampling_settings(session.pipe, **overrides)
    folder = session.request_dir()
    items, t0, total = [], time.time(), n * len(labels)
    for k, name in enumerate(labels):
        def report(done, _total, k=k, name=name):
            if progress is not None:
                progress((k * n + done, total), desc=f"generating {name}", unit="images")

        images = generate(session.pipe, name, n, seed=seed,
                          batch_size=session.cfg.sample.batch_size, settings=settings,
                          progress=False, callback=report, positions=level)
        for i, image in enumerate(images):
            path = save_png(image, folder / name / f"{name}_{i:04d}.png")
            items.append((str(path), f"{name} {i}"))
    seconds = time.time() - t0
    record = {"model": str(session.model_dir), "seed": seed, **settings,
              "labels": {name: n for name in labels}, "seconds": round(seconds, 2)}
    if takes_levels(session.pipe):
        record["slice_position"] = "random" if level is None else level
    write_json(folder / "sample.json", record)
    archive = folder / f"samples_{'_'.join(labels)}_seed{seed}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path != archive:
                zf.write(path, path.relative_to(folder))
    return items, settings_text(session, record), str(archive)


def slice_level(session: AppSession, value) -> float | None:
    """The slice level field: empty (a random level per image) or a number in [0, 1], for a
    level-conditioned model only."""
    if value is None or str(value).strip() == "":
        return None
    if not takes_levels(session.pipe):
        raise AppError("Slice level: this model is label-only (trained without slice levels); "
                       "leave the field empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise AppError(f"Slice level must be a number from 0 (a patient's lowest slice) to 1 "
                       f"(its highest), or empty for a random level per image; got {value!r}")
    return number


def guidance(value) -> float:
    """The guidance field: a finite number >= 1 (1 = the conditional model alone)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number >= 1):
        raise AppError(f"Guidance scale must be a number of 1 or more (1 = no guidance), got "
                       f"{value!r}")
    return number


def settings_text(session: AppSession, record: dict) -> str:
    counts = ", ".join(f"{n} {name}" for name, n in record["labels"].items())
    parts = [f"**{counts}**", f"seed {record['seed']}"]
    if "scheduler" in record:
        parts += [f"sampler {record['scheduler']}", f"{record['num_inference_steps']} steps",
                  f"guidance {record['guidance_scale']:g}"]
        if record.get("guidance_interval"):
            low, high = record["guidance_interval"]
            parts[-1] += f" where {low:g} < sigma <= {high:g}"
    if "slice_position" in record:
        parts.append(f"slice level {record['slice_position']}")
    parts.append(f"{record['seconds']:.1f} s")
    size = f"{NATIVE_SIZE[0]}x{NATIVE_SIZE[1]}"
    return (" · ".join(parts) + f"  \nEach image is {size} px, as `python sample.py --model "
            f"{session.model_dir} --label ... --num_images N --seed {record['seed']}` writes it.")


# ----------------------------------------------------------------------------- slice


def read_upload_slice(session: AppSession, uploaded: str | None, progress=None):
    return read_slice(session, None, uploaded, progress)


def read_slice(session: AppSession, picked: str | None, uploaded: str | None = None,
               progress=None):
    """The Counterfactual tab, for now: (slice image, notes, judge probabilities) of a test
    slice (``picked``, a path relative to the data folder) or an uploaded file."""
    path, pixels, note, true_label = _chosen_slice(session, picked, uploaded)
    source = f"upload `{path.name}`" if uploaded else f"`{picked}`"
    resolution = session.cfg.data.resolution
    model_pixels = to_model_input(pixels, resolution)  # what the model and the judge see
    shown = to_native(model_pixels)
    judge = session.judge(progress)
    probs = judge.probabilities(torch.tensor(model_pixels)[None, None])[0]
    lines = [f"Source: {source}" + (f" (true label **{true_label}**)" if true_label else ""),
             f"Conversion: {note}" if note else "Conversion: none (an 8-bit grey slice of the "
             "native size)",
             f"Judge: trained at {judge.resolution} px"
             + (f", validation accuracy {judge.val_accuracy:.3f}" if judge.val_accuracy else "")]
    return shown, "  \n".join(lines), {name: float(p) for name, p in zip(CLASS_NAMES, probs,
                                                                          strict=True)}


def edit_slice(session: AppSession, picked: str | None, uploaded: str | None, source_label,
               target: str, strength, method: str, guidance_value, level_value, progress=None):
    """The Counterfactual tab's edit: (counterfactual, difference map, notes, edit.json) of the
    picked test slice or the upload, written by the same ``edit_to_folder`` as edit.py."""
    if not session.saved:
        raise AppError(f"edits need a latent diffusion model; {session.model_dir} is a "
                       f"{session.kind}")
    if not (uploaded or picked):
        raise AppError("pick a test slice or upload one, then press Edit")
    if uploaded and source_label not in CLASS_NAMES:
        raise AppError("Source label: choose AD or NC for an uploaded slice (a test slice's "
                       "label is its folder's)")
    path, pixels, note, label = _chosen_slice(session, picked, uploaded)
    label = label or source_label
    if target not in EDIT_TARGETS:
        raise AppError(f"Edit to: choose one of {', '.join(EDIT_TARGETS)}, got {target!r}")
    try:
        number = float(strength)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number <= 1:
        raise AppError(f"Strength must be a number in (0, 1] (the share of the noise schedule "
                       f"the edit spans; {DEFAULT_STRENGTH} measured best), got {strength!r}")
    strength = number
    if method not in EDIT_METHODS:
        raise AppError(f"Method: choose {' or '.join(EDIT_METHODS)}, got {method!r}")
    source = as_source(path, pixels, note, label, slice_level(session, level_value))
    if takes_levels(session.pipe) and source.position is None:
        raise AppError("Slice level: this model reads each slice's level and this upload has no "
                       "patient slices beside it; enter its level, 0 (the patient's lowest "
                       "slice) to 1 (its highest)")
    settings = {"guidance_scale": guidance(guidance_value),
                "num_inference_steps": session.saved["num_inference_steps"]}
    judge = session.judge(progress)
    if progress is not None:
        progress(0.5, desc="editing")
    folder = session.request_dir()
    to = "flip" if target == EDIT_TARGETS[0] else target
    record = edit_to_folder(session.pipe, judge, [source], to, folder, settings=settings,
                            strength=strength, method=method, seed=0, batch_size=1,
                            record={"model": str(session.model_dir)})
    row = record["slices"][0]
    lines = [f"**{row['source_label']} -> {row['target_label']}**: the judge's p("
             f"{row['target_label']}) {row['p_target_before']:.3f} -> {row['p_target_after']:.3f}"
             f" · SSIM to the source {row['ssim_to_source']:.3f} · mean change in the brain "
             f"{row['mean_abs_change_in_brain']:.1f} grey levels",
             describe_edit(method, strength, settings)
             + (f", slice level {source.position:.2f}" if source.position is not None else "")
             + f" · {record['seconds']:.1f} s",
             *([f"Conversion: {source.note}"] if source.note else []), truth_summary(session)]
    return (str(folder / row["output"]), str(folder / row["difference"]), "  \n".join(lines),
            str(folder / "edit.json"))


def _chosen_slice(session: AppSession, picked: str | None, uploaded: str | None):
    """(path, pixels, conversion, true label or None) of the upload, else the picked test
    slice; the Counterfactual tab's one way of reading its input."""
    if uploaded:
        return Path(uploaded), *read_upload(uploaded), None
    if picked:
        path = _test_slice(session, picked)
        return path, *read_upload(path), picked.split("/")[1]
    raise AppError("pick a test slice or upload one")


def _test_slice(session: AppSession, picked: str) -> Path:
    """A picked test slice (a path relative to the data folder), or a message."""
    if session.data_dir is None:
        raise AppError("no data folder: start the app with --data to pick test slices")
    path = session.data_dir / picked
    if not path.is_file():
        raise AppError(f"{picked} is not in {session.data_dir}; pick another slice")
    return path


def truth_summary(session: AppSession) -> str:
    """One line: this model's edits against the stand-in truth, if it was scored."""
    folder = _own_output(session, "edit_truth", "truth.json") or \
        _own_output(session, "counterfactual", "truth.json")
    if folder is None:
        return ("Not scored against the truth yet: `python edit.py --model "
                f"{session.model_dir} --data DATA --evaluate` on the stand-in data.")
    record = json.loads((folder / "truth.json").read_text())
    parts = []
    for direction, block in record["directions"].items():
        edit = block["rows"][f"edit ({record['method']})"]
        auc = edit["localisation_auc"]  # null where no pixel truly changed
        faint = block["rows"].get(SCALED_TRUTH_ROW, {}).get("flip_rate")  # older records: none
        share = block.get("axioms", {}).get("share_explained")
        parts.append(f"{direction}" + ("" if share is None else
                                       f" explains {share:.0%} of the true change,")
                     + f" flip rate {edit['flip_rate']:.2f}"
                     + ("" if faint is None else f" (the truth at the edit's size {faint:.2f})")
                     + ", closer to the truth than "
                     f"the source in {edit['closer_than_source']:.0%}, localisation AUC "
                     + ("n/a" if auc is None else f"{auc:.2f}"))
    return (f"Against the truth (`{folder}`, {record['method']}, strength "
            f"{record['strength']:g}): " + "; ".join(parts))


# ----------------------------------------------------------------------------- map and model


def _own_output(session: AppSession, name: str, record: str) -> Path | None:
    """MODEL/<name> (the scripts' default), or the sibling folder `make demo` writes when its
    record names this model; None if neither holds ``record``."""
    own = session.model_dir / name
    if (own / record).is_file():
        return own
    sibling = session.model_dir.parent / name
    try:
        meta = json.loads((sibling / record).read_text())
        if Path(meta.get("model", "")).resolve() == session.model_dir.resolve():
            return sibling
    except (OSError, ValueError):
        pass
    return None


def map_view(session: AppSession, folder: Path | None):
    """(figure path, text) of a computed map, or (None, how to get one)."""
    if folder is None:
        how = ("press **Compute the map**" if session.data_dir is not None
               else "start the app with --data, then press **Compute the map**")
        return None, (f"No map for this model yet: {how} (cached in "
                      f"`{session.model_dir}/embedding`).")
    text = (folder / "embedding.md").read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("!["))
    return str(folder / "embedding.png"), f"From `{folder}`.\n\n{text}"


def cached_map(session: AppSession):
    return map_view(session, _own_output(session, "embedding", "embedding.json"))


def compute_map(session: AppSession, progress=None):
    """UMAP of the test split's latents with generated slices, written to MODEL/embedding."""
    if session.data_dir is None:
        raise AppError("the map needs the data: start the app with --data AD_NC_FOLDER")
    if progress is not None:
        progress(0, desc="encoding, generating and embedding (a minute or two on a CPU)")
    out = session.model_dir / "embedding"
    space = "latent" if hasattr(session.pipe, "vae") else "judge"
    run_embedding(session.model_dir, session.data_dir, out, space=space,
                  with_generated=MAP_GENERATED, device=str(session.pipe.device), progress=False)
    return map_view(session, out)


CONFIG_HEADING = "Full training config:"  # where a card's long config block starts


def model_text(session: AppSession) -> tuple[str, str]:
    """(the model card with the training metrics and the evaluation table, the card's full
    training config): the config is long, so the page folds it away."""
    parts, config = [], ""
    card = session.model_dir / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # the Hub's metadata header
        text, _, config = text.partition(CONFIG_HEADING)
        parts.append(text.strip())
    else:
        parts.append(f"# {session.model_dir}\n\n(no model card)")
    metrics = session.model_dir / "metrics.json"
    if metrics.is_file():
        rows = [f"| {k} | {v} |" for k, v in json.loads(metrics.read_text()).items()
                if not isinstance(v, dict | list)]
        parts.append("## Training\n\n| metric | value |\n|---|---|\n" + "\n".join(rows))
    evaluation = _own_output(session, "eval", "metrics.json")
    if evaluation is not None and (evaluation / "metrics.md").is_file():
        parts.append(f"## Evaluation (`{evaluation}`)\n\n"
                     + (evaluation / "metrics.md").read_text(encoding="utf-8"))
    else:
        parts.append(f"## Evaluation\n\nNot evaluated yet: `python evaluate.py --model "
                     f"{session.model_dir} --data DATA`.")
    return "\n\n".join(parts), config.strip() or "(not in the model card)"


# ----------------------------------------------------------------------------- the page


def build_app(session: AppSession):
    """The Gradio Blocks of the four tabs; every handler goes through ``shown_in_page``."""
    import gradio as gr

    def with_progress(fn):
        """fn(session, *inputs, progress) as a page handler; Gradio finds the progress tracker
        by its default value, the pattern its documentation gives."""
        @shown_in_page
        def handler(*args, progress=gr.Progress()):  # noqa: B008
            return fn(session, *args, progress=progress)
        return handler

    diffusion = bool(session.saved)
    # delete_cache: Gradio's copies of served images older than an hour, checked every 10 min
    with gr.Blocks(title="AD/NC brain MRI slices", analytics_enabled=False,
                   delete_cache=(600, 3600)) as app:
        gr.Markdown(f"## AD/NC brain MRI slices · `{session.model_dir}` ({session.kind})")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    label = gr.Radio([*CLASS_NAMES, BOTH], value=CLASS_NAMES[1], label="Label",
                                     elem_id="label")
                    num_images = gr.Number(4, precision=0, elem_id="num-images",
                                           label=f"Images per label (1 to {MAX_IMAGES})")
                    guidance = gr.Number(session.saved.get("guidance_scale", 1.0),
                                         label="Guidance scale (1 = none)", visible=diffusion,
                                         elem_id="guidance")
                    steps = gr.Number(session.saved.get("num_inference_steps", 1), precision=0,
                                      label="Steps", visible=diffusion, elem_id="steps")
                    scheduler = gr.Dropdown(list(SCHEDULERS), label="Sampler",
                                            value=session.saved.get("scheduler"),
                                            visible=diffusion, elem_id="scheduler")
                    seed = gr.Number(session.cfg.sample.seed, precision=0, label="Seed",
                                     elem_id="seed")
                    level = gr.Textbox("", label="Slice level, 0 (lowest) to 1 (highest); "
                                       "empty: random", visible=takes_levels(session.pipe),
                                       elem_id="slice-level")
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="Generated slices (256x240)", columns=4,
                                         format="png", elem_id="gallery", object_fit="contain")
                    settings = gr.Markdown(elem_id="settings")
                    download = gr.File(label="Download the PNGs (zip)", elem_id="download")
            go.click(with_progress(generate_images),
                     [label, num_images, guidance, steps, scheduler, seed, level],
                     [gallery, settings, download], api_name="generate")
        with gr.Tab("Counterfactual", id="counterfactual"):
            gr.Markdown(COUNTERFACTUAL_NOTE)
            with gr.Row():
                with gr.Column(scale=1):
                    picked = gr.Dropdown(session.test_slices(), value=None,
                                         label="A test slice from the data folder",
                                         elem_id="slice-pick")
                    upload = gr.File(label=f"or upload a slice (PNG or JPEG, at most "
                                           f"{MAX_UPLOAD_MB} MB)", type="filepath",
                                     file_types=["image"], elem_id="slice-upload")
                with gr.Column(scale=2):
                    shown = gr.Image(label="The slice as the model sees it", format="png",
                                     type="numpy", image_mode="L", elem_id="slice-image",
                                     interactive=False)
                    notes = gr.Markdown(elem_id="slice-notes")
                    probs = gr.Label(label="Judge: probability of each label", elem_id="judge")
            picked.input(with_progress(read_slice), [picked], [shown, notes, probs],
                         api_name="read_test_slice")
            upload.upload(with_progress(read_upload_slice), [upload], [shown, notes, probs],
                          api_name="read_upload")
            with gr.Row(visible=diffusion):
                with gr.Column(scale=1, min_width=240):
                    source_label = gr.Radio(list(CLASS_NAMES), value=None, elem_id="edit-source",
                                            label="Source label (an upload's; a test slice's "
                                                  "is its folder's)")
                    target = gr.Radio(list(EDIT_TARGETS), value=EDIT_TARGETS[0],
                                      label="Edit to", elem_id="edit-target")
                    strength = gr.Number(DEFAULT_STRENGTH, label="Strength (noise level), in "
                                         "(0, 1]",
                                         elem_id="edit-strength")
                    method = gr.Dropdown(list(EDIT_METHODS), value=DEFAULT_METHOD,
                                         label="Method", elem_id="edit-method")
                    edit_guidance = gr.Number(DEFAULT_GUIDANCE, label="Guidance scale (posterior: "
                                              "extrapolation; 1 = none)",
                                              elem_id="edit-guidance")
                    edit_level = gr.Textbox("", label="Slice level, 0 to 1 (an upload's; empty: "
                                            "from the patient's slices beside it)",
                                            visible=takes_levels(session.pipe),
                                            elem_id="edit-level")
                    edit = gr.Button("Edit", variant="primary", elem_id="edit-btn")
                with gr.Column(scale=2):
                    with gr.Row():
                        edited = gr.Image(label="Counterfactual (256x240)", type="filepath",
                                          interactive=False, elem_id="edit-image")
                        difference = gr.Image(label="Change: red brighter, blue darker",
                                              type="filepath", interactive=False,
                                              elem_id="edit-difference")
                    edit_notes = gr.Markdown(elem_id="edit-notes")
                    edit_record = gr.File(label="edit.json", elem_id="edit-record")
            edit.click(with_progress(edit_slice),
                       [picked, upload, source_label, target, strength, method, edit_guidance,
                        edit_level], [edited, difference, edit_notes, edit_record],
                       api_name="edit")
        with gr.Tab("Map", id="map"):
            map_image = gr.Image(label="Map of the data coloured by diagnosis", type="filepath",
                                 interactive=False, elem_id="map-image")
            map_text = gr.Markdown(elem_id="map-text")
            compute = gr.Button("Compute the map", elem_id="map-btn",
                                interactive=session.data_dir is not None)
            compute.click(with_progress(compute_map), None, [map_image, map_text],
                          api_name="compute_map")
        with gr.Tab("Model", id="model"):
            card = gr.Markdown(elem_id="model-card")
            with gr.Accordion("Full training config", open=False):
                config = gr.Markdown(elem_id="model-config")
        app.load(shown_in_page(lambda: (*cached_map(session), *model_text(session))), None,
                 [map_image, map_text, card, config])
    return app.queue(default_concurrency_limit=1)


def launch(session: AppSession, port: int) -> None:
    """Serve on 127.0.0.1:port until interrupted; a port in use is the user's to change."""
    import gradio as gr

    app = build_app(session)
    # system fonts: the default theme fetches Google Fonts, which an offline machine cannot
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    try:
        app.launch(server_name="127.0.0.1", server_port=port, share=False, theme=theme,
                   max_file_size=f"{MAX_UPLOAD_MB}mb", allowed_paths=[str(session.work_dir)],
                   footer_links=[], show_error=True)
    except OSError as err:
        raise UserError(f"cannot serve on 127.0.0.1:{port} ({err}); pass another --port") from None
