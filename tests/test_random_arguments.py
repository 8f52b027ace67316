"""Random argument lists thrown at every script's parser and at the config loader.

A seeded generator draws flags, config keys and values (valid ones, typos, out-of-range numbers,
YAML oddities); every command must end with exit 0 or 2 and one message, never a traceback or
exit 1, and must touch no file outside its output folder. Models and data point at missing
folders, so each command stops at its checks (a valid one at "no data" / "no model").
"""

import dataclasses
import importlib
import random
import subprocess

import pytest
from accelerate.state import AcceleratorState

from pipelines.config import SECTIONS, Config, load_config
from pipelines.errors import UserError

from .conftest import ROOT

COMBINATIONS = 200
VALUES = ["0", "1", "-1", "2", "8", "33", "64", "1e30", "-1e-9", "nan", "inf", "-inf", "1e-3",
          "0.5", "1.5", "true", "false", "no", "yes", "", "abc", "[]", "[1, 2]", "[8, 16]",
          "{a: 1}", str(2**64), str(2**32), "all", "AD", "NC", "MCI", "ddim", "/no/such", "null",
          "~", "'", "[", "0x10", "1_000", "100001", "posterior", "edges", "umap", "judge"]
MODEL_FLAGS = ["--scheduler", "--num_inference_steps", "--guidance_scale", "--device"]
SCRIPT_FLAGS = {
    "train_vae.py": ["--resume_from_checkpoint", "--pretrained"],
    "train_unet.py": ["--resume_from_checkpoint", "--cache_dir", "--vae"],
    "train_stylegan2.py": ["--resume_from_checkpoint"],
    "sample.py": MODEL_FLAGS + ["--label", "--num_images", "--seed", "--batch_size",
                                "--slice_position", "--guidance_interval"],
    "evaluate.py": MODEL_FLAGS + ["--num_images", "--seed", "--inception_weights",
                                  "--skip_corrupt"],
    "embed.py": MODEL_FLAGS + ["--split", "--method", "--space", "--with_generated",
                               "--max_images", "--seed", "--skip_corrupt"],
    "edit.py": MODEL_FLAGS + ["--label", "--slice_position", "--split", "--num_images", "--to",
                              "--strength", "--method", "--draws", "--change_from", "--refine",
                              "--seed", "--batch_size", "--image"],
}
SWITCHES = {"train_vae.py": ["--overwrite"], "train_unet.py": ["--overwrite"],
            "train_stylegan2.py": ["--overwrite"], "edit.py": ["--evaluate"]}
CONFIG_KEYS = [(s, f.name) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))]


def config_flag(rng: random.Random) -> str:
    section, key = rng.choice(CONFIG_KEYS)
    return rng.choice([f"--{section}.{key}", f"--{key}", f"--{key}x", f"--{section}x.{key}"])


def random_argv(script: str, rng: random.Random, tmp_path) -> list[str]:
    trainer = script.startswith("train_")
    argv = ["--data", "/no/such/AD_NC"]
    argv += ["--output_dir", str(tmp_path / "out")] if trainer else \
        ["--model", "/no/such/model", "--out", str(tmp_path / "out")]
    if script == "train_unet.py":
        argv += ["--vae", "/no/such/vae"]
    for _ in range(rng.randint(0, 5)):
        roll = rng.random()
        if trainer and roll < 0.5:
            flag = config_flag(rng)
        elif roll < 0.9:
            flag = rng.choice(SCRIPT_FLAGS[script])
        else:
            argv.append(rng.choice(SWITCHES.get(script, ["--help"]) + ["stray", "--"]))
            continue
        argv += [flag] + [rng.choice(VALUES) for _ in range(rng.choice([1, 1, 1, 2, 0]))]
    if trainer and rng.random() < 0.3:
        argv += ["--config", rng.choice(["configs/tiny.yaml", "/no/such.yaml", "configs"])]
    return argv


def files_outside(tmp_path) -> set:
    """Every path under tmp_path but the output folder, and what git sees changed in the repo."""
    listed = {p for p in tmp_path.rglob("*") if "out" not in p.relative_to(tmp_path).parts}
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    return listed | set(status.splitlines())


@pytest.mark.parametrize("script", list(SCRIPT_FLAGS))
def test_random_arguments_exit_0_or_2(script, tmp_path, capsys):
    main = importlib.import_module(script.removesuffix(".py")).main
    rng = random.Random(script)
    (tmp_path / "keep.txt").write_text("a file no command may touch")
    before = files_outside(tmp_path)
    codes = {}
    for _ in range(COMBINATIONS):
        argv = random_argv(script, rng, tmp_path)
        try:
            main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code
        except BaseException as err:  # a traceback, as the user would see one
            raise AssertionError(f"{script} {argv} raised {err!r}") from err
        finally:
            # one process per command in real use: Accelerate's process-wide state starts afresh
            AcceleratorState._reset_state(reset_partial_state=True)
        err = capsys.readouterr().err
        assert code in (0, 2), f"{script} {argv} exited {code}: {err}"
        assert "Traceback" not in err, f"{script} {argv}: {err}"
        codes[code] = codes.get(code, 0) + 1
    assert files_outside(tmp_path) == before
    assert codes.get(2, 0) > COMBINATIONS // 2  # the draws do reach the checks


def random_yaml(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(0, 4)):
        section = rng.choice([*SECTIONS, "bogus", "data"])
        lines.append(f"{section}:" + rng.choice(["", " {}", " []", " 3"]))
        for _ in range(rng.randint(0, 3)):
            key = rng.choice([k for s, k in CONFIG_KEYS if s == section] or ["resolution"])
            lines.append(f"  {key}: " + (rng.choice(VALUES) or '""'))
    return "\n".join(lines) + "\n"


def test_random_configs_load_or_name_the_mistake(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "c.yaml"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(COMBINATIONS):
        path.write_text(random_yaml(rng))
        overrides = []
        for _ in range(rng.randint(0, 3)):
            overrides += [config_flag(rng), rng.choice(VALUES)]
        try:
            load_config(path, overrides, section=rng.choice([None, "vae", "unet", "sample"]))
            outcomes["loaded"] += 1
        except UserError as err:
            assert str(err), overrides
            outcomes["refused"] += 1
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0, outcomes
