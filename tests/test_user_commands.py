"""The commands of the design, typed as a user types them after `make demo` (tiny config)."""

import json
import os
import shutil
import subprocess
import sys

from .conftest import ROOT, TINY


def run_in(cwd, *args, timeout=600):
    """A repository script run from another working directory, as a user's shell would."""
    return subprocess.run(list(map(str, args)), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "2"})


def accelerate():
    return shutil.which("accelerate", path=os.path.dirname(sys.executable))


def test_train_unet_without_arguments_names_what_it_needs(tmp_path):
    proc = run_in(tmp_path, accelerate(), "launch", "--quiet", ROOT / "train_unet.py")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "no VAE at outputs/demo/vae_run/vae" in lines[0] and "make demo" in lines[0]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    direct = run_in(tmp_path, sys.executable, ROOT / "train_unet.py")
    assert direct.returncode == 2 and "Traceback" not in direct.stderr


def test_design_commands_after_the_demo_layout(tiny_data, tiny_vae_run, tiny_model, tmp_path):
    # the folders `make demo` leaves behind, in the user's working directory
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "phantom").symlink_to(tiny_data)
    (tmp_path / "outputs" / "demo" / "vae_run").mkdir(parents=True)
    (tmp_path / "outputs" / "demo" / "vae_run" / "vae").symlink_to(tiny_vae_run / "vae")
    (tmp_path / "outputs" / "demo" / "model").symlink_to(tiny_model)
    # the demo config is the default; the test keeps it tiny
    proc = run_in(tmp_path, accelerate(), "launch", "--quiet", "--num_processes", "1",
                  ROOT / "train_unet.py", "--config", TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "outputs" / "unet" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and (tmp_path / "outputs" / "unet" / "model_index.json").is_file()
    proc = run_in(tmp_path, sys.executable, ROOT / "sample.py", "--label", "AD")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tiny_model / "samples_cli" / "AD").glob("*.png"))) == 2  # tiny num_images
    proc = run_in(tmp_path, sys.executable, ROOT / "embed.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tiny_model / "embedding" / "embedding.png").is_file()
