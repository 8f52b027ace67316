"""Run folders are owned: one run of one kind per folder, locked while it trains.

A trainer calls :func:`claim_run_dir` before it reads any data. It refuses a folder that holds
another run (of any kind) unless told to continue it (``--resume_from_checkpoint latest``, same
kind, same settings but the ones :data:`RESUMABLE` lists) or to replace it (``--overwrite``),
and holds an exclusive ``flock`` on ``OUTPUT_DIR/.lock`` until the process ends. The kernel drops
the lock when a process dies, so a lock file left by a killed run is recognised as stale, named,
and taken over.

Deletion policy: the project deletes only what it can prove it wrote: in a folder marked by its
``run.json``, the entries of a run's layout (:data:`RUN_LAYOUT`); in a script's output folder,
the files its record names by kind (:func:`prepare_output_dir`). Anything else is kept, or the
folder is refused with the names of what is there. No output folder lies inside an input.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from .errors import UserError

RUN_FILE = "run.json"
KINDS = ("vae", "unet", "stylegan2")
# what makes a folder hold a run worth keeping: a checkpoint, a saved model or its metrics
RESULTS = ("checkpoints", "model_index.json", "vae", "unet", "generator", "metrics.json")
# everything a trainer, and the scripts whose default output lies in a model folder, write there
RUN_LAYOUT = frozenset(RESULTS + (
    RUN_FILE, "config.yaml", "logs", "samples", "latent_cache", "scheduler", "README.md",
    "pipeline_adni.py", "pipeline_stylegan2.py", "slices.py", "judge", "judge_level", "eval",
    "embedding", "samples_cli", "edit", "edit_truth"))
_TEMPORARY = re.compile(r"^\..+\.tmp$|^.+\.old$|^\.write-test-\d+$")  # files.py's half-writes
# config keys a resumed run may change: budgets, logging, where and how often it saves, the
# precision, trackers, memory switches and worker count of the machine it continues on; every
# other key must match
RESUMABLE = frozenset({
    "max_train_steps", "max_train_minutes", "checkpointing_steps", "checkpoints_total_limit",
    "validation_steps", "log_steps", "num_workers", "num_validation_images", "mixed_precision",
    "skip_corrupt", "report_to", "gradient_checkpointing", "allow_tf32"})
# the config sections that shape a run of each kind (the others are not read by it)
SECTIONS_OF = {"vae": ("data", "vae"), "unet": ("data", "unet"),
               "stylegan2": ("data", "stylegan2")}
LOCK_FILE = ".lock"
_HELD: dict = {}  # folder -> its open lock file, kept for the life of the process


def is_main_rank() -> bool:
    """Rank 0 of a torchrun / accelerate launch group (or a plain process)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_writable_dir(path: str | Path, flag: str = "--output_dir", reads=()) -> Path:
    """Create ``path`` if needed; a clear error if it is a file, cannot be written, or lies
    inside (or holds) one of the input folders ``reads``."""
    path = Path(path)
    check_apart(path, reads, flag)
    data = data_set_above(path)
    if data is not None:
        raise UserError(f"{flag} {path} is inside the data set {data}: its files would be read "
                        "as slices (inspect and the trainers count them); pick a folder outside "
                        "it")
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pick a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{flag} {path} cannot be written ({err.strerror}); pick a folder you "
                        "can write to") from None
    return path


def data_set_above(path: str | Path) -> Path | None:
    """The AD_NC data set (a folder with train/ or test/ holding AD/ or NC/) that ``path`` lies
    in, if any."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if any((folder / split / label).is_dir() for split in ("train", "test")
               for label in ("AD", "NC")):
            return folder
    return None


def check_apart(out: str | Path, reads=(), flag: str = "--out") -> None:
    """An output folder never inside an input (its files would be read as data, e.g. counted as
    slices) and never holding one (replacing the output would delete the input)."""
    target = Path(out).resolve()
    for source in reads:
        if source is None:
            continue
        source = Path(source).resolve()
        if target == source or target.is_relative_to(source):
            raise UserError(f"{flag} {out} is inside {source}, which this command reads: its "
                            "files would mix with the input; pick a folder outside it")
        if source.is_relative_to(target):
            raise UserError(f"{flag} {out} holds {source}, which this command reads; pick a "
                            "folder that does not contain its inputs")


def _lock(run_dir: Path) -> str:
    """Take the folder's lock; returns what its lock file said before (a stale run's name)."""
    path = run_dir / LOCK_FILE
    if str(path.resolve()) in _HELD:  # this process holds it already (a second run in-process)
        return ""
    handle = open(path, "a+")  # noqa: SIM115  (held open until the process ends)
    handle.seek(0)
    previous = handle.read().strip()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{run_dir} is in use by another run ({previous or 'unknown process'});"
                        " wait for it to finish, or pick another --output_dir") from None
    if previous:
        print(f"note: {path} was left by a run that no longer runs ({previous}); taking over",
              file=sys.stderr)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    _HELD[str(path.resolve())] = handle
    return previous


def release_run_dir(run_dir: str | Path, remove: bool = True) -> None:
    """Drop this process's lock on ``run_dir`` and (``remove``) its lock file: a run that ends,
    or is refused, leaves none behind."""
    path = Path(run_dir) / LOCK_FILE
    handle = _HELD.pop(str(path.resolve()), None)
    if handle is None:
        return
    if remove:
        path.unlink(missing_ok=True)
    handle.close()


def _release_all() -> None:
    for key in list(_HELD):
        release_run_dir(Path(key).parent)


atexit.register(_release_all)


def _contents(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.name not in (LOCK_FILE,))


def _delete(paths) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _names(paths, most: int = 5) -> str:
    paths = list(paths)
    return ", ".join(p.name for p in paths[:most]) + (", ..." if len(paths) > most else "")


def _kind_of(run_dir: Path) -> str | None:
    try:
        kind = json.loads((run_dir / RUN_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in KINDS else None


def _own(path: Path) -> bool:
    """An entry of a run folder's layout (or a half-written file of one)."""
    return path.name in RUN_LAYOUT or bool(_TEMPORARY.match(path.name))


def _has_checkpoint(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
                                 for p in root.iterdir())


def config_changes(run_dir: Path, kind: str, config) -> list[str]:
    """``key: saved -> new`` for every key of the run's sections that differs from the
    ``config.yaml`` saved in ``run_dir`` and may not change on resume."""
    path = run_dir / "config.yaml"
    if config is None or not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise UserError(f"{path} is damaged, so this resume cannot be checked against the run's "
                        "settings; restore it, or start afresh with --overwrite") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a saved config; restore it, or start afresh with "
                        "--overwrite")
    new = config.to_dict()
    changes = []
    for section in SECTIONS_OF[kind]:
        old_values = saved.get(section) or {}
        for key, value in new.get(section, {}).items():
            if key in RESUMABLE or key not in old_values or old_values[key] == value:
                continue
            changes.append(f"{section}.{key}: {old_values[key]!r} -> {value!r}")
    return changes


def folder_digest(path: str | Path) -> str | None:
    """SHA-256 of a model folder's JSON and weight files (a pipeline folder: its vae/), or None
    where there is none: which model a run read, whatever folder it now lies in."""
    path = Path(path)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.suffix in (".json", ".safetensors")):
        digest.update(file.relative_to(path).as_posix().encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def claim_run_dir(run_dir: str | Path, kind: str, resume: str | None = None,
                  overwrite: bool = False, reads: tuple = (), config=None,
                  inputs: dict | None = None) -> Path:
    """Check, lock and mark ``run_dir`` for a run of ``kind`` (main rank only; others no-op).

    ``reads``: paths this run reads (the data, the VAE), which the run folder may neither lie
    in nor hold. ``config``: the run's settings, compared on resume with the saved ones;
    ``inputs``: fingerprints of what it reads (e.g. the VAE's ``folder_digest``), recorded in
    ``run.json`` and compared on resume too. A refused claim leaves the folder as it found it.
    """
    run_dir = Path(run_dir)
    if not is_main_rank():
        return run_dir
    check_apart(run_dir, reads, "--output_dir")
    existed = run_dir.exists()
    check_writable_dir(run_dir)
    had_lock = (run_dir / LOCK_FILE).exists()
    previous = _lock(run_dir)
    try:
        _check_claim(run_dir, kind, resume, overwrite, config, inputs or {})
    except BaseException:
        release_run_dir(run_dir, remove=not had_lock)
        if had_lock:  # a lock file found there stays, as it was
            (run_dir / LOCK_FILE).write_text(previous + "\n" if previous else "")
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    # a run that continues keeps the inputs it began with (none known: saved before they were)
    continuing = resume and not overwrite and _has_checkpoint(run_dir)
    recorded = _saved_inputs(run_dir) if continuing else (inputs or {})
    record = {"kind": kind, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "argv": sys.argv, "inputs": recorded}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return run_dir


def _saved_inputs(run_dir: Path) -> dict:
    try:
        saved = json.loads((run_dir / RUN_FILE).read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _check_claim(run_dir: Path, kind: str, resume: str | None, overwrite: bool,
                 config, inputs: dict) -> None:
    """The deletion policy and the resume contract; deletes only a run's own entries."""
    if resume and resume != "latest" and not (Path(resume) / "trainer_state.json").is_file():
        raise UserError(f"--resume_from_checkpoint {resume} is not a checkpoint folder; use "
                        "'latest' or a checkpoint-N folder under OUTPUT_DIR/checkpoints")
    contents = _contents(run_dir)
    other = _kind_of(run_dir)
    legacy_run = other is None and _has_checkpoint(run_dir)  # a run saved before run.json
    if not contents:
        return
    if other is None and not legacy_run:
        raise UserError(f"{run_dir} already holds files this project did not write "
                        f"({_names(contents)}); nothing there is deleted, not even with "
                        "--overwrite: pick an empty or new --output_dir")
    owner = other or kind
    if resume and owner != kind:
        raise UserError(f"{run_dir} holds a {owner} run, not a {kind} run: "
                        "--resume_from_checkpoint continues a run of the same kind; pick "
                        "another --output_dir")
    if resume and not overwrite:
        if resume == "latest" and not _has_checkpoint(run_dir):
            results = [p for p in contents if p.name in RESULTS]
            if results:
                raise UserError(f"--resume_from_checkpoint latest: {run_dir} holds a {owner} run "
                                f"({_names(results)}) but no checkpoint to continue from; it is "
                                "left as it is. Replace it with --overwrite, or pick another "
                                "--output_dir")
        saved = _saved_inputs(run_dir)
        changed = [f"--{k}" for k, v in inputs.items() if saved.get(k) not in (None, v)]
        if changed:
            raise UserError(f"--resume_from_checkpoint continues {run_dir}, which was trained "
                            f"on another {' and '.join(changed)} (its files differ from the "
                            "ones given now): a resumed run must read the same model; give "
                            "that one, or start afresh with --overwrite or another --output_dir")
        changes = config_changes(run_dir, kind, config)
        if changes:
            raise UserError(f"--resume_from_checkpoint continues {run_dir} with the settings it "
                            f"was started with, but these differ: {'; '.join(changes)}. Give "
                            "the saved values (OUTPUT_DIR/config.yaml), or start afresh with "
                            "--overwrite or another --output_dir; only "
                            f"{', '.join(sorted(RESUMABLE))} may change on resume")
        return
    results = [p for p in contents if p.name in RESULTS]
    if results and not overwrite:
        raise UserError(f"{run_dir} already holds a {owner} run ({_names(results)}); continue "
                        "it with --resume_from_checkpoint latest, replace it with --overwrite, "
                        "or pick another --output_dir")
    ours = [p for p in contents if _own(p)]
    kept = [p for p in contents if not _own(p)]
    if kept:
        print(f"note: {run_dir} also holds {_names(kept)}, not written by this project; kept",
              file=sys.stderr)
    _delete(ours)  # an earlier run of this project (--overwrite), or one that saved nothing


OUTPUT_SUFFIXES = (".png", ".json", ".md", ".csv")


def _written(path: Path) -> bool:
    """A file of the kinds the scripts write, or a folder of nothing else."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return all(_written(p) for p in path.iterdir())
    return path.suffix in OUTPUT_SUFFIXES or bool(_TEMPORARY.match(path.name))


def prepare_output_dir(out_dir: str | Path, record: str, flag: str = "--out",
                       reads=()) -> Path:
    """A folder for a script's outputs that never mixes two runs' files.

    A folder written before by the same script (it holds ``record``) is emptied first, when all
    it holds are files of the kinds the scripts write (pictures, JSON, Markdown, CSV); a folder
    holding anything else is refused rather than mixed into, and nothing in it is deleted.
    ``reads``: the command's inputs, which the folder may neither lie in nor hold.
    """
    out_dir = check_writable_dir(out_dir, flag, reads)
    contents = list(out_dir.iterdir())
    if contents and not (out_dir / record).is_file():
        raise UserError(f"{flag} {out_dir} already holds other files ({_names(sorted(contents))});"
                        " pick an empty or new folder")
    foreign = sorted(p for p in contents if not _written(p))
    if foreign:
        raise UserError(f"{flag} {out_dir} holds an earlier {record} and also "
                        f"{_names(foreign)}, which this project did not write; nothing was "
                        "deleted: move those away or pick an empty or new folder")
    _delete(contents)
    return out_dir
