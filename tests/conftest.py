"""Shared fixtures: a tiny stand-in data set and tiny trained models, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def with_overrides(base: list, overrides: list) -> list:
    """``base`` flags (``--flag value`` pairs) with those ``overrides`` names replaced: the scripts
    refuse a flag given twice, so a test's bad value takes the default's place."""
    named = {str(a) for a in overrides if str(a).startswith("--")}
    pairs = [base[i:i + 2] for i in range(0, len(base), 2)]
    return [x for flag, value in pairs if str(flag) not in named for x in (flag, value)] + \
        list(overrides)


def run_script(*args, check: bool = True, env: dict | None = None, timeout: int = 600):
    """Run a repo script or module in a subprocess; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Stand-in AD_NC: 3 train + 2 test patients per class, 4 slices each."""
    from tools.phantom import write_phantom

    out = tmp_path_factory.mktemp("data") / "AD_NC"
    write_phantom(out, train_patients=3, test_patients=2, slices=4, seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_vae_run(tiny_data, tmp_path_factory) -> Path:
    from pipelines.config import load_config
    from pipelines.vae.trainer import train_vae

    out = tmp_path_factory.mktemp("vae_run")
    train_vae(load_config(TINY), tiny_data, out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_vae_run, tiny_data, tmp_path_factory) -> Path:
    from pipelines.config import load_config
    from pipelines.ldm.trainer import train_unet

    out = tmp_path_factory.mktemp("ldm")
    train_unet(load_config(TINY), tiny_vae_run / "vae", tiny_data, out)
    return out


@pytest.fixture(scope="session")
def tiny_level_model(tiny_vae_run, tiny_data, tmp_path_factory) -> Path:
    """The tiny model conditioned on the slice level as well as the label."""
    from pipelines.config import load_config
    from pipelines.ldm.trainer import train_unet

    out = tmp_path_factory.mktemp("ldm_level")
    train_unet(load_config(TINY, ["--unet.level_conditioning", "true"]), tiny_vae_run / "vae",
               tiny_data, out)
    return out


@pytest.fixture(scope="session")
def tiny_gan(tiny_data, tmp_path_factory) -> Path:
    from pipelines.config import load_config
    from pipelines.stylegan2.trainer import train_stylegan2

    out = tmp_path_factory.mktemp("stylegan2")
    train_stylegan2(load_config(TINY), tiny_data, out)
    return out


# A prelude that makes this repository unimportable, so a subprocess shows what plain diffusers
# does with a model folder (the project is also installed editable into the venv).
NO_REPO = """
import importlib.abc, sys
class _NoRepo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pipelines", "tools", "bench"):
            raise ImportError(f"{name} must not be imported here")
sys.meta_path.insert(0, _NoRepo())
"""


def run_without_repo(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose working directory is ``cwd``, with a clean
    PYTHONPATH and this repository's packages blocked from import."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(cwd / ".hf_modules")
    proc = subprocess.run([sys.executable, "-c", NO_REPO + code], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
