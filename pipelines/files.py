"""Writing files so that a kill at any moment leaves the old complete copy or the new one.

Every file goes to a temporary name beside its target and is renamed over it (a rename within a
folder is atomic); folders (a saved model, a checkpoint) are swapped in with one atomic exchange
where the kernel offers it (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader never finds
neither copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import shutil
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    """JSON, atomically; non-finite floats become null (JSON has no NaN)."""
    return write_text(path, json.dumps(_finite(data), indent=2, default=_json_default))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return str(value)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where not supported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                     _RENAME_EXCHANGE) == 0


def replace_dir(new: str | Path, dst: str | Path) -> Path:
    """Move folder ``new`` to ``dst``, replacing what is there without a moment of neither.

    With an atomic exchange ``dst`` is always one complete copy. Elsewhere the old copy is first
    renamed to ``dst.old`` and only deleted once the new one is in place (``restore_dir`` puts it
    back after a kill between the two renames).
    """
    new, dst = Path(new), Path(dst)
    if dst.exists() and _exchange(new, dst):
        shutil.rmtree(new)  # now the old copy
        return dst
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def restore_dir(dst: str | Path) -> None:
    """After a kill inside ``replace_dir``'s fallback: put ``dst.old`` back if ``dst`` is gone."""
    dst = Path(dst)
    old = dst.with_name(dst.name + ".old")
    if not dst.exists() and old.is_dir():
        os.replace(old, dst)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty temporary folder beside ``path``; swap it in when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained_atomic(model, path: str | Path) -> Path:
    """``model.save_pretrained`` into a temporary folder, then swap it in."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(path)
