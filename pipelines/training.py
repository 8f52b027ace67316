"""The one training loop every trainer uses (VAE, UNet, StyleGAN2): accumulate, clip, step, EMA,
log, validate, checkpoint, stop. Trainers differ only in the model and the loss function.

Survivability: checkpoints are written to ``checkpoint-N.tmp`` and renamed when complete, so a
kill mid-save leaves the last good one. A NaN/inf loss stops the run before anything is saved.

Exact resume: ``resume="latest"`` continues as if the run had never stopped -- a run killed after
checkpoint N and resumed ends with bit-identical weights to an uninterrupted one
(tests/test_resume.py, one and two processes). Every random stream is either a pure function of
(seed, step, rank) or in the checkpoint:

- which examples: :class:`BatchSchedule`, a pure function of (seed, step, rank);
- the batch's own randomness (flips, latent samples, label dropout): ``get_batch`` gets a fresh
  generator per micro-step from :func:`batch_generator` (seed, micro-step, rank), never a
  long-lived one that a resume would re-seed;
- the loss's randomness (diffusion noise and timesteps, the VAE posterior sample, StyleGAN2
  styles, DiffAugment) draws from the global torch (CPU and CUDA), NumPy and Python RNGs, which
  ``accelerator.save_state``/``load_state`` store per process (``random_states_<rank>.pkl``);
- model, optimizer, LR schedule, Accelerate's step counter and EMA are in the checkpoint;
- nothing outside the training step may move the global RNGs: validation, the EMA save after
  the RNG snapshot and the EMA load after the restore (diffusers' ``EMAModel`` builds a randomly
  initialised model to save or load) run inside :func:`rng_untouched`, so how often a run
  validates or whether it resumed never changes what it trains.

Test hook: with ``PIPELINES_KILL_AFTER_CHECKPOINT=N`` in the environment, every process SIGKILLs
itself right after checkpoint N is complete (renamed, all ranks past the barrier), so tests can
kill a run at a well-defined moment instead of racing it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm

from .errors import UserError
from .files import replace_dir

CHECKPOINT_PREFIX = "checkpoint-"
KILL_AFTER_CHECKPOINT_ENV = "PIPELINES_KILL_AFTER_CHECKPOINT"


class TrainingDiverged(UserError):
    """Loss became NaN/inf: stop with a clear message, keep the last good checkpoint."""


class BatchSchedule:
    """Which examples each process sees at each step: a seeded permutation per epoch.

    A pure function of (seed, step), so a resumed run sees exactly the batches the killed run
    would have; the global batch is split across processes without overlap.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if num_examples < 1:
            raise UserError("no training examples")
        if batch_size * world_size > num_examples:
            raise UserError(f"--train_batch_size {batch_size} x {world_size} process(es) is more "
                            f"than the {num_examples} training examples; lower it")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world = rank, world_size
        self._epoch, self._perm = -1, None

    def indices(self, micro_step: int) -> torch.Tensor:
        global_batch = self.batch_size * self.world
        start = micro_step * global_batch + self.rank * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            if epoch != self._epoch:
                gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
            out.append(self._perm[offset])
        return torch.stack(out)


def batch_generator(seed: int, micro_step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for one micro-step's batch on one process: a pure function of
    (seed, micro_step, rank), so a resumed run draws the same flips and noise as an
    uninterrupted one and processes never share a stream."""
    digest = hashlib.blake2b(f"batch/{seed}/{micro_step}/{rank}".encode(), digest_size=8)
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Run a block without moving the global RNGs (torch CPU and CUDA, NumPy, Python).

    For work outside the training step (validation, saving and loading the EMA) so that it never
    changes the random numbers training draws next.
    """
    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def make_accelerator(cfg, output_dir: str | Path, find_unused_parameters: bool = False):
    """Accelerator logging to ``cfg.report_to`` under OUTPUT_DIR/logs (bf16 autocast works on
    CPU too); TF32 as ``cfg.allow_tf32`` says; bf16 on a GPU without it is a UserError."""
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)] if \
        find_unused_parameters else []
    precision = resolve_precision(cfg.mixed_precision)
    if torch.cuda.is_available():
        check_bf16(precision, torch.cuda.get_device_name(),
                   torch.cuda.is_bf16_supported(including_emulation=False))
    set_tf32(cfg.allow_tf32)
    trackers = tracker_names(cfg.report_to)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(Path(output_dir) / "logs")),
        kwargs_handlers=kwargs,
    )
    set_seed(cfg.seed + accelerator.process_index)
    return accelerator


def cpu_has_bf16() -> bool:
    """Whether torch computes bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere emulated.

    Both the CPU's flags and torch's kernel choice count: with ``ATEN_CPU_CAPABILITY=avx2`` (and
    ``ONEDNN_MAX_CPU_ISA=AVX2``) a bf16 host runs as an AVX2-only one, fp32 included, which is how
    the AVX2 path is checked on a bf16 machine.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    return native and torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def resolve_precision(requested: str) -> str:
    """The config's mixed precision, made safe for the device at hand.

    ``auto``: what ``accelerate launch`` was given (its ``--mixed_precision`` or the ``accelerate
    config`` file, passed on as ACCELERATE_MIXED_PRECISION), else bf16. On a CPU without native
    bf16 (AVX2-only machines, e.g. the dev/CI machines), bf16 autocast is emulated and measured
    50x slower than fp32, so it falls back to fp32 ("no"); fp16 autocast needs a GPU.
    """
    if requested == "auto":
        requested = launcher_precision() or "bf16"
    if torch.cuda.is_available() or requested == "no":
        return requested
    if cpu_has_bf16():
        return "bf16"
    return "no"


def launcher_precision() -> str | None:
    """The mixed precision ``accelerate launch`` hands its processes, None outside it."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    return value if value in ("no", "fp16", "bf16") else None


def check_bf16(precision: str, device_name: str, supported: bool) -> None:
    """Stop before training when bf16 is asked of a GPU that does not compute it (before
    Ampere: V100, T4, RTX 20xx), where it would be emulated or fail mid-run."""
    if precision == "bf16" and not supported:
        raise UserError(f"mixed precision bf16 needs a GPU of compute capability 8.0 or later "
                        f"(Ampere on), and {device_name} is not one: train with "
                        "--mixed_precision fp16 (or no), or pick fp16 in `accelerate config`")


def set_tf32(allowed: bool) -> None:
    """TensorFloat-32 for fp32 matmuls and convolutions on Ampere and later GPUs (a 10-bit
    mantissa inside the product, fp32 everywhere else); no effect on CPUs or older GPUs."""
    mode = "tf32" if allowed else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


REPORT_TO = ("tensorboard", "wandb", "tensorboard,wandb")


def tracker_names(report_to: str) -> list[str]:
    """``report_to`` as Accelerate's ``log_with``; wandb must be installed (it is pinned in
    requirements.txt; WANDB_MODE=offline logs without a network, for ``wandb sync`` later)."""
    names = report_to.split(",")
    if "wandb" in names:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UserError("report_to wandb needs the wandb package: pip install wandb (or "
                            "--report_to tensorboard)")
    return names


def log_image(accelerator: Accelerator, name: str, pixels: np.ndarray, step: int) -> None:
    """Send one (H, W) uint8 image (a validation grid) to every tracker of this run; call it on
    the main process, where the trackers live."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(name, pixels, global_step=step, dataformats="HW")
        elif tracker.name == "wandb":
            tracker.log_images({name: [pixels]}, step=step)


SCALE_RULES = ("none", "linear", "sqrt")


def scale_for_processes(cfg, num_processes: int):
    """The training config for ``num_processes`` processes under ``cfg.scale_lr``.

    ``none``: every count as written: each process takes its ``train_batch_size``, so N
    processes see N times the samples in the same steps. ``linear`` / ``sqrt``: the config is
    written for one process and the budget is in samples: step counts (training, warm-up,
    checkpoints, validation) are divided by N, rounded up, the EMA decay raised to the N-th
    power (the same horizon in samples), the learning rates multiplied by N (the linear rule,
    Goyal et al. 2017) or by sqrt(N) (the square-root rule for Adam, Malladi et al. 2022).
    """
    if cfg.scale_lr == "none" or num_processes == 1:
        return cfg
    factor = num_processes if cfg.scale_lr == "linear" else math.sqrt(num_processes)
    counts = ("max_train_steps", "lr_warmup_steps", "checkpointing_steps", "validation_steps",
              "disc_start_step")
    changes = {key: math.ceil(getattr(cfg, key) / num_processes) for key in counts
               if hasattr(cfg, key)}
    changes |= {key: getattr(cfg, key) * factor for key in
                ("learning_rate", "disc_learning_rate") if hasattr(cfg, key)}
    changes["ema_decay"] = cfg.ema_decay ** num_processes
    return dataclasses.replace(cfg, **changes)


def scaling_note(cfg, scaled) -> str:
    """What :func:`scale_for_processes` changed, for the run's log ('' when nothing)."""
    if scaled is cfg:
        return ""
    changed = [f"{f.name} {getattr(cfg, f.name):g} -> {getattr(scaled, f.name):g}"
               for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(scaled, f.name)]
    return f"scale_lr {cfg.scale_lr}: " + ", ".join(changed)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (``.tmp`` folders are half-written and ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(output_dir, resume: str | None) -> Path | None:
    """``latest`` -> newest complete checkpoint (None on a fresh run); a path must exist."""
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"--resume_from_checkpoint {resume} is not a checkpoint folder; use "
                        f"'latest' or a {CHECKPOINT_PREFIX}N folder under OUTPUT_DIR/checkpoints")
    return path


@dataclass
class TrainState:
    step: int = 0
    wall_seconds: float = 0.0
    images_seen: int = 0
    # this run's speed and memory (StepMeter.metrics()): measured, not saved in checkpoints
    throughput: dict = field(default_factory=dict)

    def saved(self) -> dict:
        """What a checkpoint keeps: where the run stands, not how fast this process ran."""
        return {"step": self.step, "wall_seconds": self.wall_seconds,
                "images_seen": self.images_seen}


THROUGHPUT_WARMUP_STEPS = 3  # left out of the speed: allocator growth, cuDNN autotuning, lazy init


class StepMeter:
    """Steady-state speed of the training steps and the loop's peak GPU memory.

    The trainers' ``img_per_s`` divides everything by the wall time (start-up, validation,
    checkpoints); a speed that says what the hardware does counts only the training steps after
    the first ``warmup`` of this run. CUDA runs asynchronously, so the clock is synchronised
    only where the loop leaves for other work (end of warm-up, validation, a save): in between,
    consecutive steps are timed end to end without slowing them.
    """

    def __init__(self, device: torch.device, warmup: int = THROUGHPUT_WARMUP_STEPS):
        self.cuda = device.type == "cuda"
        self.device, self.warmup = device, warmup
        self.done = self.steps = self.images = 0
        self.seconds = 0.0
        self._since: float | None = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def step_start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def step_done(self, images: int, leaving: bool) -> None:
        """One optimizer step of ``images`` finished; ``leaving``: other work comes next."""
        self.done += 1
        leaving = leaving or self.done == self.warmup
        if leaving and self.cuda:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.done > self.warmup:
            self.steps, self.images = self.steps + 1, self.images + images
            self.seconds += now - self._since
        self._since = None if leaving else now

    def metrics(self, accelerator: Accelerator) -> dict:
        """``steady_img_per_s`` (all processes' images), the steps and seconds it is over, and
        ``peak_gpu_memory_gib`` per process (None off CUDA). Every process must call it."""
        peak = None
        if self.cuda:
            mine = torch.tensor([float(torch.cuda.max_memory_allocated(self.device))],
                                device=self.device, dtype=torch.float64)
            peak = [round(v / 2**30, 3) for v in accelerator.gather(mine).tolist()]
        speed = self.images / self.seconds if self.steps and self.seconds > 0 else None
        return {"steady_img_per_s": speed, "steady_steps": self.steps,
                "steady_seconds": self.seconds, "peak_gpu_memory_gib": peak}


def save_checkpoint(accelerator: Accelerator, output_dir, state: TrainState, limit: int,
                    save_extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``checkpoint-N.tmp``, then rename: a kill at any moment leaves a good checkpoint."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = root / f"{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)  # snapshots the global RNGs
    accelerator.wait_for_everyone()  # every rank's RNG file written before the rename
    if accelerator.is_main_process:
        if save_extra is not None:
            with rng_untouched():  # the run goes on from the snapshot, as a resumed one does
                save_extra(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state.saved()))
        replace_dir(tmp, final)
        for old in checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path,
                    load_extra: Callable[[Path], None] | None = None) -> TrainState:
    """Restore model, optimizer, scheduler, step counter and this process's global RNGs."""
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        accelerator.print(f"warning: {path} has no {rng_file.name} (saved by a different number "
                          "of processes?): resuming, but not exactly as the run would have gone")
    try:
        accelerator.load_state(str(path))
        if load_extra is not None:
            with rng_untouched():  # keep the RNG state just restored
                load_extra(path)
        return TrainState(**json.loads((path / "trainer_state.json").read_text()))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError,
            EOFError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {first}): it "
                        "is damaged or was written by another model or config. Resume from an "
                        "earlier one with --resume_from_checkpoint PATH, or start afresh with "
                        "--overwrite") from None


class EMAWeights:
    """Exponential moving average of one module's weights (diffusers ``EMAModel``).

    ``select(model)`` picks the tracked module out of the trained one (e.g. the generator out of
    a generator + discriminator pair). Saved into and restored from every checkpoint.
    """

    def __init__(self, module, decay: float, warmup: bool, select=lambda model: model):
        from diffusers.training_utils import EMAModel

        self.module_cls, self.select = type(module), select
        self.ema = EMAModel(module.parameters(), decay=decay, use_ema_warmup=warmup,
                            model_cls=type(module), model_config=module.config, foreach=True)

    def step(self, model) -> None:
        self.ema.step(self.select(model).parameters())

    def copy(self, model) -> torch.nn.Module:
        """A float32 eval-mode copy of the tracked module holding the averaged weights."""
        out = copy.deepcopy(self.select(model)).float().eval()
        self.ema.copy_to(out.parameters())
        return out

    def save(self, checkpoint: Path) -> None:
        self.ema.save_pretrained(checkpoint / "ema")

    def load(self, checkpoint: Path) -> None:
        from diffusers.training_utils import EMAModel

        saved = EMAModel.from_pretrained(checkpoint / "ema", self.module_cls)
        self.ema.load_state_dict(saved.state_dict())


def run_training(
    *,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    loss_fn: Callable[[torch.nn.Module, object, int], tuple[torch.Tensor, dict]],
    get_batch: Callable[[torch.Tensor, torch.Generator], object],
    num_examples: int,
    cfg,
    output_dir: str | Path,
    resume: str | None = None,
    ema: EMAWeights | None = None,
    on_validation: Callable[[int], None] | None = None,
    save_extra: Callable[[Path], None] | None = None,
    load_extra: Callable[[Path], None] | None = None,
    desc: str = "train",
) -> TrainState:
    """Train ``model`` (already passed through ``accelerator.prepare``) for ``cfg.max_train_steps``.

    ``loss_fn(model, batch, step) -> (loss, logs)``: the trainer's objective (scalar loss).
    ``get_batch(indices, generator) -> batch``: examples by index, on the right device; any
    randomness in making the batch (flips, latent samples, label dropout) must come from
    ``generator`` (fresh each micro-step, see :func:`batch_generator`). The loss may use the global
    RNGs, which the checkpoints carry.
    ``ema``: stepped after each optimizer step, saved and restored with the checkpoints.
    ``on_validation(step)`` runs on the main process, with the global RNGs restored after it.
    The returned state's ``throughput`` holds this run's steady speed and peak GPU memory
    (:class:`StepMeter`).
    """
    if ema is not None:
        save_extra, load_extra = _chain(save_extra, ema.save), _chain(load_extra, ema.load)
    state = TrainState()
    checkpoint = resolve_resume(output_dir, resume)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, load_extra)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    schedule = BatchSchedule(num_examples, cfg.train_batch_size, cfg.seed,
                             accelerator.process_index, accelerator.num_processes)
    accum = cfg.gradient_accumulation_steps
    images_per_step = cfg.train_batch_size * accum * accelerator.num_processes
    start_step, start_wall = state.step, state.wall_seconds
    t0 = time.time()
    bar = tqdm(total=cfg.max_train_steps, initial=state.step, desc=desc,
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    logs: dict = {}
    limit_s = cfg.max_train_minutes * 60
    meter = StepMeter(accelerator.device)
    while state.step < cfg.max_train_steps:
        meter.step_start()
        model.train()
        for micro in range(accum):
            micro_step = state.step * accum + micro
            batch = get_batch(schedule.indices(micro_step),
                              batch_generator(cfg.seed, micro_step, accelerator.process_index))
            with accelerator.accumulate(model), accelerator.autocast():
                loss, logs = loss_fn(model, batch, state.step)
                if not torch.isfinite(loss.detach()).all():
                    last = checkpoints(output_dir)
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {state.step}; nothing was saved over "
                        f"the last good checkpoint ({last[-1] if last else 'none yet'}). "
                        + divergence_advice(cfg.mixed_precision, bool(last)))
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(model))
        state.step += 1
        state.images_seen += images_per_step
        state.wall_seconds = start_wall + time.time() - t0
        bar.update(1)
        if state.step % cfg.log_steps == 0 or state.step == cfg.max_train_steps:
            speed = (state.step - start_step) * images_per_step / max(time.time() - t0, 1e-9)
            logs = {k: float(v) for k, v in logs.items()}
            logs |= {"lr": lr_scheduler.get_last_lr()[0], "img_per_s": speed}
            accelerator.log(logs, step=state.step)
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
        out_of_time = limit_s > 0 and state.wall_seconds - start_wall >= limit_s
        done = state.step >= cfg.max_train_steps or out_of_time
        validate = on_validation is not None and (state.step % cfg.validation_steps == 0 or done)
        save = state.step % cfg.checkpointing_steps == 0 or done
        meter.step_done(images_per_step, leaving=validate or save)
        if validate:
            if accelerator.is_main_process:
                with rng_untouched():
                    on_validation(state.step)
            accelerator.wait_for_everyone()
        if save:
            save_checkpoint(accelerator, output_dir, state, cfg.checkpoints_total_limit,
                            save_extra)
            kill_if_asked(state.step)
        if out_of_time:
            accelerator.print(f"stopping at step {state.step}: max_train_minutes reached")
            break
    bar.close()
    state.throughput = meter.metrics(accelerator)
    return state


def divergence_advice(mixed_precision: str, has_checkpoint: bool) -> str:
    """What to try after a non-finite loss, given the run's precision."""
    fresh = "start afresh with a lower --learning_rate (--overwrite)"
    if mixed_precision != "no":
        retry = ("resume with --resume_from_checkpoint latest --mixed_precision no"
                 if has_checkpoint else "try --mixed_precision no")
        return f"Try full precision: {retry}; if it diverges again, {fresh}"
    return f"The run is already in full precision: {fresh}"


def kill_if_asked(step: int) -> None:
    """Test hook: SIGKILL this process if ``PIPELINES_KILL_AFTER_CHECKPOINT`` is ``step``.

    Called on every process right after checkpoint ``step`` is complete, so a test can
    interrupt a run at a known point (a crash just after a save) instead of racing it.
    """
    if os.environ.get(KILL_AFTER_CHECKPOINT_ENV, "").strip() == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _chain(first, second):
    """Call ``first`` (if any) then ``second`` on the same argument."""
    if first is None:
        return second

    def both(arg):
        first(arg)
        second(arg)
    return both


def prepare_run(accelerator: Accelerator, model, param_groups, cfg, full_cfg, output_dir,
                name: str):
    """AdamW + warm-up/decay schedule, passed through Accelerate; the run folder and its logs.

    Returns (model, optimizer, lr_scheduler), prepared.
    """
    # fused: one kernel per step instead of a Python loop over parameter tensors (on 2 CPU
    # cores the loop cost the 7M UNet ~31 ms a step, the fused kernel ~6; bench/bench_train.py)
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    lr_scheduler = cosine_lr(optimizer, cfg, accelerator.num_processes)
    prepared = accelerator.prepare(model, optimizer, lr_scheduler)
    if accelerator.is_main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        full_cfg.save(Path(output_dir) / "config.yaml")
        # wandb: its run folder under OUTPUT_DIR/logs, the whole config as the run's config
        accelerator.init_trackers(name, init_kwargs={"wandb": {
            "dir": str(Path(output_dir) / "logs"), "config": full_cfg.to_dict()}})
    return prepared


def cosine_lr(optimizer, cfg, num_processes: int = 1):
    """Warm-up + decay over the run; counts are in optimizer steps, as Accelerate steps it."""
    from diffusers.optimization import get_scheduler

    # accelerate's prepared scheduler advances num_processes times per optimizer step
    return get_scheduler(cfg.lr_scheduler, optimizer,
                         num_warmup_steps=cfg.lr_warmup_steps * num_processes,
                         num_training_steps=cfg.max_train_steps * num_processes)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
