"""bench/gpu_check.sh end to end on the CPU at the tiny config, so the GPU run cannot rot unseen;
and the parts only a GPU machine reaches: wheels installed when packages are missing, the
multi-GPU launcher, the table of peaks, the FLOPs of a VAE run the discriminator joins midway."""

import importlib
import json
import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bench import gpu_check
from pipelines.errors import UserError
from tests.conftest import ROOT

STEPS = 5  # the trainers leave 3 warm-up steps out of the speed: 2 timed


def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--config", "configs/tiny.yaml",
         "--out", str(out), "--minutes", "0", "--steps", str(STEPS), "--train_patients", "3",
         "--test_patients", "2", "--slices", "4", "--sample_images", "2",
         "--wheels", str(tmp_path / "no_wheels")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable, "PIPELINES_LOG_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())

    device = record["device"]
    assert device["type"] == "cpu" and device["count"] == 1
    assert device["bf16_peak_tflops"] is None and device["matmul_tflops"] is None
    assert record["environment"]["missing"] == []  # the venv has every package: used as it is
    assert record["versions"]["torch"] and record["versions"]["diffusers"]
    assert record["stages"]["data"]["train"] == {"NC": 12, "AD": 12}
    for name in ("vae", "unet"):
        stage = record["stages"][name]
        assert stage["steps"] == STEPS and stage["timed_steps"] == STEPS - 3
        assert stage["img_per_s"] > 0 and stage["img_per_s_overall"] > 0
        assert stage["gflop_per_image"] > 0
        assert stage["achieved_tflops"] == pytest.approx(
            stage["gflop_per_image"] * stage["img_per_s"] / 1000)
        assert stage["mfu"] is None and stage["peak_gpu_memory_gib"] is None
        assert stage["processes"] == 1 and stage["batch_per_process"] == 8
    # tiny's discriminator starts at step 3: on in both timed steps (3 and 4)
    assert record["stages"]["vae"]["discriminator_share_of_timed_steps"] == 1.0
    sample = record["stages"]["sample"]
    assert sample["img_per_s"] > 0 and sample["num_inference_steps"] == 4

    one = np.asarray(Image.open(next((out / "samples" / "AD").glob("*.png"))))
    grid = Image.open(record["sample_grid"])
    h, w = one.shape
    assert grid.mode == "L" and grid.size == (2 * (w + 2) + 2, 2 * (h + 2) + 2)  # AD row, NC row
    table = (out / "gpu_check.md").read_text()
    assert "| vae (fp32, batch 8 x 1) |" in table and "| unet" in table and "| sample" in table
    assert "=== train UNet" in (out / "gpu_check.log").read_text()


def _wheel(folder, name="gpucheck_probe", code="VALUE = 7\n"):
    """A minimal pure-Python wheel: package ``name`` whose ``__init__`` is ``code``."""
    folder.mkdir()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": code,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            zf.writestr(arc, text)
    return path


def test_missing_packages_install_from_the_wheels(tmp_path, monkeypatch):
    wheels = _wheel(tmp_path / "whl").parent
    monkeypatch.setattr(gpu_check, "NEEDED", ("gpucheck_probe",))
    monkeypatch.setattr(gpu_check, "IMPORTED", ("gpucheck_probe",))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    monkeypatch.delitem(sys.modules, "gpucheck_probe", raising=False)
    env = gpu_check.ensure_packages(wheels, tmp_path / "site")
    assert env["missing"] == ["gpucheck_probe"]
    assert env["installed"] == ["gpucheck_probe-1.0-py3-none-any.whl"]
    assert importlib.import_module("gpucheck_probe").VALUE == 7
    # the stages run as subprocesses: they find the site first, then the repository
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "site"), str(ROOT),
                                                          "elsewhere"]


def test_a_wheel_that_does_not_import_here_stops_the_check_at_once(tmp_path, monkeypatch):
    wheels = _wheel(tmp_path / "whl", "gpucheck_broken", "raise ImportError('pyarrow>=24')\n")
    monkeypatch.setattr(gpu_check, "NEEDED", ("gpucheck_broken",))
    monkeypatch.setattr(gpu_check, "IMPORTED", ("gpucheck_broken",))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    with pytest.raises(UserError, match="gpucheck_broken .* does not import here.*pyarrow>=24"):
        gpu_check.ensure_packages(wheels.parent, tmp_path / "site")


def test_missing_packages_without_wheels_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "NEEDED", ("gpucheck_absent",))
    with pytest.raises(UserError, match="make gpu-wheels"):
        gpu_check.ensure_packages(tmp_path, tmp_path / "site")


def test_several_gpus_train_through_accelerate_launch():
    assert gpu_check.launcher(1, "bf16") == [sys.executable]
    cmd = gpu_check.launcher(4, "bf16")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16"


def test_bf16_peak_by_device_name():
    peak = gpu_check.bf16_peak_tflops
    assert peak("NVIDIA H200") == peak("NVIDIA H100 80GB HBM3") == 989.4
    assert peak("NVIDIA H100 PCIe") == 756.5 and peak("NVIDIA H200 NVL") == 835.5
    assert peak("NVIDIA L40S") == 362.05 and peak("NVIDIA L4") == 121.0
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA GeForce RTX 3090") is None  # unknown: no MFU rather than a guess


def test_vae_flops_follow_the_discriminator_into_the_timed_steps():
    flops = {"vae_off": 100.0, "vae_on": 160.0}
    vcfg = SimpleNamespace(disc_weight=0.1, disc_start_step=6)
    # steps 0-9, the last 6 timed (4-9): the discriminator is on in 6-9, 4 of the 6
    per_image, share = gpu_check.vae_flops_per_image(
        flops, {"steps": 10, "steady_steps": 6}, vcfg)
    assert share == pytest.approx(4 / 6) and per_image == pytest.approx(100 + 60 * 4 / 6)
    assert gpu_check.vae_flops_per_image(flops, {"steps": 5, "steady_steps": 2}, vcfg) == \
        (100.0, 0.0)
    vcfg.disc_weight = 0.0
    assert gpu_check.vae_flops_per_image(flops, {"steps": 10, "steady_steps": 6}, vcfg)[1] == 0
