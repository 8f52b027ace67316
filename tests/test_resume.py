"""Exact resume: a run SIGKILLed right after a checkpoint and resumed with ``latest`` ends with
bit-identical weights to the run that was never interrupted -- for each trainer, on one process
and on two (torchrun, gloo on CPU).

The kill comes from the training loop's own test hook (``PIPELINES_KILL_AFTER_CHECKPOINT``), so it
lands at a known moment: just after checkpoint-2 is complete on every rank.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.training import KILL_AFTER_CHECKPOINT_ENV

from .conftest import ROOT, TINY

STEPS, EVERY, KILL_AFTER = 4, 2, 2  # checkpoints 2 and 4; validation at 3 and 4
FINAL = f"checkpoints/checkpoint-{STEPS}"
CHECKPOINT_WEIGHTS = [f"{FINAL}/model.safetensors",
                      f"{FINAL}/ema/diffusion_pytorch_model.safetensors"]
# the EMA weights each trainer saves as its model
SAVED_WEIGHTS = {"vae": "vae/diffusion_pytorch_model.safetensors",
                 "unet": "unet/diffusion_pytorch_model.safetensors",
                 "stylegan2": "generator/diffusion_pytorch_model.safetensors"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _script_args(trainer: str, tiny_data, request) -> list[str]:
    common = ["--config", str(TINY), "--data", str(tiny_data)]
    if trainer == "vae":  # the tiny config's discriminator starts at step 3: after the resume
        return ["train_vae.py", *common, "--vae.ema_decay", "0.9"]
    if trainer == "unet":
        vae = request.getfixturevalue("tiny_vae_run") / "vae"
        return ["train_unet.py", *common, "--vae", str(vae)]
    return ["train_stylegan2.py", *common]


def _start(args: list[str], output_dir, processes: int, kill_after: int | None = None,
           resume: bool = False) -> subprocess.Popen:
    """Start a tiny run in OUTPUT_DIR, its output in OUTPUT_DIR-{run,killed,resumed}.log."""
    # one thread per process: both runs of a comparison alike, and no oversubscribed 2 cores
    env = {k: v for k, v in os.environ.items() if k != KILL_AFTER_CHECKPOINT_ENV}
    env["OMP_NUM_THREADS"] = "1"
    if kill_after is not None:
        env[KILL_AFTER_CHECKPOINT_ENV] = str(kill_after)
    if processes == 1:
        cmd = [sys.executable]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        cmd = [torchrun, "--nproc_per_node", str(processes), "--master_port", str(_free_port())]
        env["ACCELERATE_USE_CPU"] = "1"
    cmd += [*args, "--output_dir", str(output_dir), "--max_train_steps", str(STEPS),
            "--checkpointing_steps", str(EVERY), "--validation_steps", "3"]
    if resume:
        cmd += ["--resume_from_checkpoint", "latest"]
    log = Path(f"{output_dir}-{'resumed' if resume else 'killed' if kill_after else 'run'}.log")
    with log.open("w") as out:  # a file, not a pipe: a run left waiting never blocks on it
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for a run; its exit code and output."""
    proc.wait(timeout=600)
    return proc.returncode, proc.log.read_text()


def _ok(proc: subprocess.Popen) -> str:
    code, output = _finish(proc)
    assert code == 0, output[-4000:]
    return output


def _assert_same_tensors(a_file, b_file) -> None:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys(), a_file
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, \
        f"{b_file}: {len(different)}/{len(a)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("trainer", ["vae", "unet", "stylegan2"])
def test_killed_and_resumed_run_is_bit_identical(trainer, processes, tiny_data, tmp_path,
                                                  request):
    args = _script_args(trainer, tiny_data, request)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    first = _start(args, straight, processes)
    request.addfinalizer(first.kill)  # a no-op once it has exited
    if processes > 1:  # two runs of two processes would only share the 2 cores
        _ok(first)
    killed = _start(args, interrupted, processes, kill_after=KILL_AFTER)
    code, output = _finish(killed)
    if processes == 1:
        assert code == -9, output[-4000:]
    else:  # torchrun reports its workers' deaths by signal and fails
        assert code != 0 and "SIGKILL" in output, output[-4000:]
    saved = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert saved == [f"checkpoint-{KILL_AFTER}"]  # killed right after it, before the next step
    resumed = _start(args, interrupted, processes, resume=True)
    assert f"resumed from {interrupted / 'checkpoints' / f'checkpoint-{KILL_AFTER}'} at step " \
        f"{KILL_AFTER}" in _ok(resumed)
    _ok(first)

    for name in [SAVED_WEIGHTS[trainer], *CHECKPOINT_WEIGHTS]:
        _assert_same_tensors(straight / name, interrupted / name)
    # the comparison can fail: the weights did move after the last common checkpoint
    earlier = load_file(straight / f"checkpoints/checkpoint-{STEPS - EVERY}/model.safetensors")
    final = load_file(straight / CHECKPOINT_WEIGHTS[0])
    assert any(not torch.equal(earlier[k], final[k]) for k in final)
