"""User-facing errors: one clear message and an exit code, never a bare traceback.

Exit codes: 0 done; 2 a mistake the user can fix (the message says what and how); 1 a bug or an
unexpected failure (one line naming it and the file holding the full trace); 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (bad path, unknown label, bad number). Printed, exit 2."""


def write_trace(exc: BaseException) -> Path:
    """The full traceback of ``exc`` in a log file; returns its path."""
    folder = Path(os.environ.get("PIPELINES_LOG_DIR", tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"adni-ldm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"command: {' '.join(sys.argv)}\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path


def resume_hint(argv: list[str] | None = None) -> str:
    """What to run after an interruption: a trainer continues from its last checkpoint."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).name if argv else ""
    if script.startswith("train_"):
        args = [a for a in argv[1:] if a != "--overwrite"]
        if "--resume_from_checkpoint" not in args:
            args += ["--resume_from_checkpoint", "latest"]
        return ("continue from the last checkpoint with `python " + " ".join([script, *args])
                + "`")
    return "run the same command again to redo it"


def cli_entry(main):
    """Wrap a script's ``main``: UserError -> one line, exit 2; anything else -> one line naming
    the failure and the trace file, exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"interrupted: {resume_hint()}", file=sys.stderr)
            sys.exit(130)
        except SystemExit:
            raise
        except Exception as err:  # a bug, or a failure nothing anticipated
            trace = write_trace(err)
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
            print(f"error: `{command}` failed with {type(err).__name__}: {err} (an unexpected "
                  f"error; full trace in {trace})", file=sys.stderr)
            sys.exit(1)

    return wrapper
