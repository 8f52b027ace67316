"""Run folders are owned: one run of one kind per folder, locked while it trains.

A trainer calls :func:`claim_run_dir` before it reads any data. It refuses a folder that holds
another run (of any kind) unless told to continue it (``--resume_from_checkpoint latest``, same
kind only) or to replace it (``--overwrite``), and holds an exclusive ``flock`` on
``OUTPUT_DIR/.lock`` until the process ends. The kernel drops the lock when a process dies, so a
lock file left by a killed run is recognised as stale, named, and taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .errors import UserError

RUN_FILE = "run.json"
# what makes a folder hold a run worth keeping: a checkpoint, a saved model or its metrics
RESULTS = ("checkpoints", "model_index.json", "vae", "unet", "generator", "metrics.json")
LOCK_FILE = ".lock"
_HELD: dict = {}  # folder -> its open lock file, kept for the life of the process


def is_main_rank() -> bool:
    """Rank 0 of a torchrun / accelerate launch group (or a plain process)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_writable_dir(path: str | Path, flag: str = "--output_dir") -> Path:
    """Create ``path`` if needed; a clear error if it is a file or cannot be written."""
    path = Path(path)
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


def _lock(run_dir: Path) -> None:
    path = run_dir / LOCK_FILE
    if str(path.resolve()) in _HELD:  # this process holds it already (a second run in-process)
        return
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


def _contents(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.name not in (LOCK_FILE,))


def _delete(paths) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _kind_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / RUN_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def claim_run_dir(run_dir: str | Path, kind: str, resume: str | None = None,
                  overwrite: bool = False, reads: tuple = ()) -> Path:
    """Check, lock and mark ``run_dir`` for a run of ``kind`` (main rank only; others no-op).

    ``reads``: paths this run reads (e.g. the VAE), which ``--overwrite`` must never delete.
    """
    run_dir = Path(run_dir)
    if not is_main_rank():
        return run_dir
    check_writable_dir(run_dir)
    _lock(run_dir)
    contents = _contents(run_dir)
    other = _kind_of(run_dir)
    if resume and other not in (None, kind):
        raise UserError(f"{run_dir} holds a {other} run, not a {kind} run: "
                        "--resume_from_checkpoint continues a run of the same kind; pick "
                        "another --output_dir")
    legacy_run = other is None and (run_dir / "checkpoints").is_dir()  # before run.json
    continuing = bool(resume) and (other == kind or legacy_run)
    holds = [p for p in contents if p.name in RESULTS] if other else contents
    if holds and not continuing:
        if not overwrite:
            what = f"a {other} run" if other else "files of another run or program"
            names = ", ".join(p.name for p in holds[:5]) + (", ..." if len(holds) > 5 else "")
            raise UserError(f"{run_dir} already holds {what} ({names}); continue it with "
                            "--resume_from_checkpoint latest, replace it with --overwrite, or "
                            "pick another --output_dir")
        for path in map(Path, reads):
            if path.resolve().is_relative_to(run_dir.resolve()):
                raise UserError(f"--overwrite would delete {path}, which this run reads; pick "
                                "another --output_dir")
    if not continuing:  # replaced (--overwrite), or leftovers of a run that saved nothing
        _delete(contents)
    record = {"kind": kind, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "argv": sys.argv}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return run_dir


def prepare_output_dir(out_dir: str | Path, record: str, flag: str = "--out") -> Path:
    """A folder for a script's outputs that never mixes two runs' files.

    A folder written before by the same script (it holds ``record``) is emptied first; a
    folder holding anything else is refused rather than mixed into.
    """
    out_dir = check_writable_dir(out_dir, flag)
    contents = list(out_dir.iterdir())
    if contents and not (out_dir / record).is_file():
        names = ", ".join(sorted(p.name for p in contents)[:5])
        raise UserError(f"{flag} {out_dir} already holds other files ({names}); pick an empty or "
                        "new folder")
    _delete(contents)
    return out_dir
