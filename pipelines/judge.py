"""The AD/NC judge: a small classifier trained from scratch, the in-domain feature extractor.

Why: ImageNet-Inception FID needs weights that cannot be downloaded here, and ImageNet features
of greyscale brain slices say little about AD vs NC anyway. A classifier trained on the real
training slices learns the features that separate the classes; its pooled penultimate activations
are the space for Frechet distance, precision/recall and k-NN metrics (``pipelines.metrics``),
and its accuracy on generated slices says whether the class labels took.

The model is a transformers ``ResNetForImageClassification`` (ResNet-10, 1.2M parameters) built
from a config: no hub download. It beat a ConvNeXt of the same widths on the stand-in data, and
trains in fp32 because emulated bf16 is far slower on CPUs without native bf16. The one
training function, :func:`train_classifier`, also trains the train-on-synthetic/test-on-real
(TSTR) classifier: both follow one recipe.

A trained judge is cached in a folder (``config.json`` + ``model.safetensors`` + ``judge.json``)
and reused only when the data fingerprint and training settings match::

    judge, reused = judge_for(train_set, cfg.eval, "outputs/judge")
    feats = judge.features(generated_uint8)   # (N, 256) numpy
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import ResNetConfig
from transformers import ResNetForImageClassification as JudgeModel

from .config import EvalConfig
from .data import CLASS_NAMES, SliceSet, patient_split, random_flip, to_unit_range
from .errors import UserError
from .files import atomic_dir

JUDGE_FILE, CONFIG_FILE, WEIGHTS_FILE = "judge.json", "config.json", "model.safetensors"
HIDDEN_SIZES = [32, 64, 128, 256]  # the last one is the feature dimension
DEPTHS = [1, 1, 1, 1]
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05


def judge_config(target: str = "label") -> ResNetConfig:
    """A 1.2M-parameter ResNet-10 (He et al. 2016, basic blocks) for one-channel slices, 2 labels
    (``target="position"``: one output, the slice's level).

    Fully convolutional with global pooling, so one config serves every resolution.
    """
    names = CLASS_NAMES if target == "label" else ("position",)
    return ResNetConfig(
        num_channels=1, embedding_size=HIDDEN_SIZES[0], hidden_sizes=HIDDEN_SIZES, depths=DEPTHS,
        layer_type="basic", num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )


def model_input(pixels) -> torch.Tensor:
    """(N, 1, R, R) float32 in [-1, 1] from uint8 (0..255) or float [-1, 1]; the one conversion."""
    pixels = torch.as_tensor(pixels)
    if pixels.ndim != 4 or pixels.shape[1] != 1:
        raise ValueError(f"pixels must be (N, 1, R, R), got shape {tuple(pixels.shape)}")
    if pixels.dtype == torch.uint8:
        return to_unit_range(pixels)
    return pixels.float().clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainSettings:
    """What a classifier's training depends on, besides its data (part of the cache key)."""

    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    flip: bool = True

    @classmethod
    def from_eval(cls, cfg: EvalConfig, seed: int = 0) -> TrainSettings:
        return cls(cfg.judge_steps, cfg.judge_batch_size, cfg.judge_learning_rate, seed)


def _schedule(steps: int):
    """Linear warm-up then cosine decay to zero, as a LambdaLR factor."""
    warmup = max(1, int(steps * WARMUP_FRACTION))
    return lambda step: min((step + 1) / warmup,
                            0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _logits(model, pixels, batch_size: int = 256) -> torch.Tensor:
    """(N, outputs) on the CPU, computed in batches on the model's device."""
    model.eval()
    device = _device(model)
    return torch.cat([model(pixel_values=model_input(pixels[i : i + batch_size]).to(device))
                      .logits.float().cpu() for i in range(0, len(pixels), batch_size)])


def _accuracy(model, pixels, labels) -> float:
    return float((_logits(model, pixels).argmax(1) == torch.as_tensor(labels)).float().mean())


def _score(model, pixels, targets) -> float:
    """Validation score, higher is better: accuracy, or minus the mean absolute level error."""
    if torch.as_tensor(targets).is_floating_point():
        predicted = _logits(model, pixels)[:, 0].clamp(0, 1)
        return -float((predicted - torch.as_tensor(targets)).abs().mean())
    return _accuracy(model, pixels, targets)


def train_classifier(pixels, labels, settings: TrainSettings, val=None, progress: bool = True,
                     eval_every: int | None = None,
                     device: str | torch.device | None = None) -> tuple[JudgeModel, float | None]:
    """Train a fresh judge-architecture classifier; returns (model, best validation accuracy).

    ``pixels``: (N, 1, R, R) uint8 or float [-1, 1]; ``labels``: (N,) ids, or float levels in
    [0, 1] for the level regressor (one output, mean squared error; its score is minus the mean
    absolute error). ``val``: optional (pixels, labels) checked every ``eval_every`` steps and at
    the end; the weights with the best validation score are kept. Without ``val`` (e.g. TSTR)
    the final weights are returned and the score is None. AdamW with warm-up + cosine decay,
    random left-right flips (a mirrored slice keeps its level), fp32. Trained channels-last:
    oneDNN's kernels for its 7x7 stem and narrow 3x3 convolutions run ~1.45x faster that way on
    CPU (RESULTS, "The demo's time"); the weights come back in the default layout.
    ``device``: where the network trains and stays (an Accelerate device; default the CPU);
    the data stay on the CPU and move one batch at a time. Cost: ``settings.steps`` batches,
    whatever the data size.
    """
    from tqdm.auto import tqdm

    pixels, labels = torch.as_tensor(pixels), torch.as_tensor(labels)
    regression = labels.is_floating_point()
    labels = labels.float() if regression else labels.long()
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng():  # seeded weight initialisation, global RNG left alone
        torch.manual_seed(settings.seed)
        model = JudgeModel(judge_config("position" if regression else "label"))
    model = model.to(device or "cpu", memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), settings.learning_rate,
                                  weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings.steps))
    eval_every = eval_every or max(1, settings.steps // 10)
    best_acc, best_state = -math.inf, None
    order, cursor = torch.randperm(len(labels), generator=generator), 0
    bar = tqdm(range(settings.steps), desc="classifier", disable=not progress, leave=False)
    for step in bar:
        if cursor + settings.batch_size > len(order):  # a new epoch
            order, cursor = torch.randperm(len(labels), generator=generator), 0
        index = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        batch = model_input(pixels[index])
        if settings.flip:
            batch = random_flip(batch, generator)
        batch = batch.to(_device(model)).contiguous(memory_format=torch.channels_last)
        target = labels[index].to(batch.device)
        model.train()
        logits = model(pixel_values=batch).logits
        loss = F.mse_loss(logits[:, 0], target) if regression else \
            F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if val is not None and ((step + 1) % eval_every == 0 or step + 1 == settings.steps):
            acc = _score(model, *val)
            if acc >= best_acc:  # on a tie, the longer-trained weights
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
            bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{acc:.3f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    return model, (best_acc if val is not None else None)


# ----------------------------------------------------------------------------- the judge


class Judge:
    """A trained AD/NC classifier at one resolution: features, predictions, accuracy, save/load."""

    def __init__(self, model: JudgeModel, resolution: int, val_accuracy: float | None = None,
                 meta: dict | None = None, batch_size: int = 256):
        self.model = model.eval()
        self.resolution = resolution
        self.val_accuracy = val_accuracy
        self.meta = meta or {}  # data fingerprint and training settings, for the cache
        self.batch_size = batch_size  # images per forward pass

    @property
    def device(self) -> torch.device:
        return _device(self.model)

    def to(self, device) -> Judge:
        """Move the network to ``device`` (inputs follow it; outputs come back to the CPU)."""
        self.model.to(device)
        return self

    def _check(self, pixels) -> None:
        if tuple(pixels.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(f"the judge was trained at {self.resolution} px, got images of "
                             f"{tuple(pixels.shape[-2:])}")

    @torch.no_grad()
    def features(self, pixels, batch_size: int | None = None) -> np.ndarray:
        """(N, D) pooled penultimate activations: the feature space of FD and precision/recall.

        Computed in batches on the judge's device: O(N) passes."""
        self._check(pixels)
        backbone, batch_size = self.model.base_model, batch_size or self.batch_size
        return torch.cat([
            backbone(pixel_values=model_input(pixels[i : i + batch_size]).to(self.device))
            .pooler_output.flatten(1).float().cpu()
            for i in range(0, len(pixels), batch_size)
        ]).numpy()

    def probabilities(self, pixels) -> np.ndarray:
        """(N, 2) class probabilities, columns in ``CLASS_NAMES`` order."""
        self._check(pixels)
        return _logits(self.model, pixels, self.batch_size).softmax(1).numpy()

    def predict(self, pixels) -> np.ndarray:
        """(N,) predicted label ids."""
        return self.probabilities(pixels).argmax(1)

    def positions(self, pixels) -> np.ndarray:
        """(N,) predicted levels in [0, 1] (a judge trained with ``target="position"``)."""
        self._check(pixels)
        return _logits(self.model, pixels, self.batch_size)[:, 0].clamp(0, 1).numpy()

    def accuracy(self, slice_set: SliceSet) -> float:
        return float((self.predict(slice_set.pixels) == slice_set.labels.numpy()).mean())

    def save(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` (the layout ``from_pretrained`` reads too),
        written to a temporary folder and swapped in whole."""
        with atomic_dir(directory) as tmp:
            self.model.config.to_json_file(tmp / CONFIG_FILE)
            state = {k: v.cpu() for k, v in self.model.state_dict().items()}
            save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
            info = {"resolution": self.resolution, "val_accuracy": self.val_accuracy,
                    "class_names": list(self.model.config.id2label.values()), **self.meta}
            (tmp / JUDGE_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Judge:
        directory = Path(directory)
        info = json.loads((directory / JUDGE_FILE).read_text())
        if tuple(info.get("class_names", CLASS_NAMES)) not in (CLASS_NAMES, ("position",)):
            raise ValueError(f"judge in {directory} has labels {info['class_names']}, "
                             f"expected {list(CLASS_NAMES)}")
        model = JudgeModel(ResNetConfig.from_json_file(directory / CONFIG_FILE))
        model.load_state_dict(load_file(directory / WEIGHTS_FILE))
        meta = {k: v for k, v in info.items()
                if k not in ("resolution", "val_accuracy", "class_names")}
        return cls(model, info["resolution"], info["val_accuracy"], meta)


def data_fingerprint(slice_set: SliceSet) -> str:
    """Any change of the training slices retrains the judge (see SliceSet.fingerprint)."""
    return slice_set.fingerprint()


def _cache_meta(train: SliceSet, settings: TrainSettings, val_fraction: float,
                target: str = "label") -> dict:
    meta = {"data_fingerprint": data_fingerprint(train), "train_images": len(train),
            "settings": {**asdict(settings), "val_fraction": val_fraction,
                         "architecture": JudgeModel.__name__, "hidden_sizes": HIDDEN_SIZES,
                         "depths": DEPTHS}}
    if target == "position":  # label judges keep their key (and their caches)
        meta["target"] = target
        meta["positions_fingerprint"] = hashlib.sha256(train.positions.numpy().tobytes()) \
            .hexdigest()
    return meta


def _saved_meta(directory: Path, wanted: dict) -> dict | None:
    """The cache-key entries of ``directory``'s judge.json, or None if there is none."""
    try:
        info = json.loads((directory / JUDGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {key: info.get(key) for key in wanted}


def train_judge(train: SliceSet, cfg: EvalConfig, val_fraction: float = 0.1, seed: int = 0,
                progress: bool = True, target: str = "label", device=None) -> Judge:
    """Train the judge on ``train`` with a patient-level validation split; keep the best weights.

    ``target="position"``: the level regressor (same network and recipe, one output); its
    ``val_accuracy`` is then minus its mean absolute level error on the held-out patients.
    """
    train_idx, val_idx = patient_split(train.patients, train.labels, val_fraction, seed)
    if not val_idx:
        raise ValueError(f"val_fraction={val_fraction} leaves no patient for validation")
    settings = TrainSettings.from_eval(cfg, seed)
    fit, held = train.subset(train_idx), train.subset(val_idx)
    targets = {"label": lambda s: s.labels, "position": lambda s: s.positions}[target]
    model, val_acc = train_classifier(fit.pixels, targets(fit), settings,
                                      val=(held.pixels, targets(held)), progress=progress,
                                      device=device)
    return Judge(model, train.resolution, val_acc,
                 _cache_meta(train, settings, val_fraction, target))


def judge_for(train: SliceSet, cfg: EvalConfig, cache_dir: str | Path, val_fraction: float = 0.1,
              seed: int = 0, progress: bool = True, target: str = "label",
              device=None) -> tuple[Judge, bool]:
    """The judge for ``train``: (loaded from ``cache_dir`` if it matches, else trained and saved,
    whether it was reused), on ``device`` (default the CPU). A cached judge matches when data
    fingerprint and settings are equal (and, for ``target="position"``, the levels).
    Cost: a fixed number of training steps plus the validation passes, linear in the data.
    """
    cache_dir = Path(cache_dir)
    for label, name in enumerate(CLASS_NAMES):
        patients = {p for p, y in zip(train.patients, train.labels.tolist(), strict=True)
                    if y == label}
        if len(patients) < 2:
            raise UserError(f"the judge needs at least 2 {name} patients in the train split (one "
                            f"to train on, one to validate on), found {len(patients)}; add "
                            "patients to the data folder")
    wanted = _cache_meta(train, TrainSettings.from_eval(cfg, seed), val_fraction, target)
    if _saved_meta(cache_dir, wanted) == wanted:
        try:
            return Judge.load(cache_dir).to(device or "cpu"), True
        except (OSError, ValueError, RuntimeError, SafetensorError):  # damaged: train anew
            pass
    judge = train_judge(train, cfg, val_fraction, seed, progress, target, device)
    judge.save(cache_dir)
    return judge, False


def tstr_accuracy(pixels, labels, test: SliceSet, cfg: EvalConfig, seed: int = 0,
                  progress: bool = True, device=None) -> float:
    """Train on synthetic (pixels, labels), test on the real ``test`` set (Esteban et al. 2017).

    Same architecture and recipe as the judge, with ``cfg.tstr_steps`` steps (the sets are a few
    hundred images, not the whole train split); TRTR is this with real images of the same count.
    """
    settings = replace(TrainSettings.from_eval(cfg, seed), steps=cfg.tstr_steps)
    model, _ = train_classifier(pixels, labels, settings, progress=progress, device=device)
    return Judge(model, test.resolution).accuracy(test)
