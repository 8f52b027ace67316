import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL

from pipelines.errors import UserError
from pipelines.vae.model import adapt_to_greyscale, load_vae

from .conftest import ROOT, TINY, run_script, with_overrides


def test_tiny_vae_saves_loadable_model_with_measured_scale(tiny_vae_run):
    metrics = json.loads((tiny_vae_run / "metrics.json").read_text())
    vae = AutoencoderKL.from_pretrained(tiny_vae_run / "vae")
    assert vae.config.in_channels == 1 and vae.config.out_channels == 1
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert vae.config.scaling_factor != 0.18215  # the measured one, not the SD default
    assert metrics["steps"] == 6 and metrics["psnr"] > 0 and 0 < metrics["ssim"] <= 1
    assert (tiny_vae_run / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (tiny_vae_run / "checkpoints").iterdir()) == \
        ["checkpoint-3", "checkpoint-6"]
    assert list((tiny_vae_run / "samples").glob("recon-*.png"))


def _rgb_vae():
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=2,
                         norm_num_groups=4, sample_size=16)


@pytest.mark.kernels
def test_rgb_vae_adapted_to_grey_gives_same_latent_and_output(tmp_path):
    torch.manual_seed(0)
    rgb = _rgb_vae().eval()
    rgb.save_pretrained(tmp_path / "rgb")
    grey = adapt_to_greyscale(load_vae(tmp_path / "rgb")).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        z_rgb = rgb.encode(x.repeat(1, 3, 1, 1)).latent_dist.mean
        z_grey = grey.encode(x).latent_dist.mean
        assert torch.allclose(z_rgb, z_grey, atol=1e-5)
        out_rgb = rgb.decode(z_rgb).sample.mean(dim=1, keepdim=True)
        assert torch.allclose(grey.decode(z_grey).sample, out_rgb, atol=1e-5)
    grey.save_pretrained(tmp_path / "grey")
    assert AutoencoderKL.from_pretrained(tmp_path / "grey").config.in_channels == 1


def test_finetune_from_local_rgb_vae(tiny_data, tmp_path):
    torch.manual_seed(0)
    _rgb_vae().save_pretrained(tmp_path / "rgb")
    run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
               tmp_path / "ft", "--pretrained", tmp_path / "rgb", "--max_train_steps", "2",
               "--disc_weight", "0")
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["pretrained"].endswith("rgb") and metrics["steps"] == 2
    assert AutoencoderKL.from_pretrained(tmp_path / "ft" / "vae").config.block_out_channels \
        == [8, 16]


def test_not_a_vae_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_vae(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(UserError, match="not an AutoencoderKL"):
        load_vae(tmp_path / "x")


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "does not exist"),
    (["--no_such_key", "3"], "unknown option"),
    (["--max_train_steps", "-5"], "from 1"),
    (["--pretrained", "/no/such/vae"], "does not exist"),
    (["--train_crop", "13"], "vae.train_crop 13 must be 0 (whole slices) or a multiple"),
    (["--train_crop", "64"], "up to data.resolution 32"),
])
def test_train_vae_bad_input_exits_2(tiny_data, tmp_path, args, message):
    proc = run_script("train_vae.py", *with_overrides(
        ["--config", TINY, "--data", tiny_data, "--output_dir", tmp_path / "o"], args), check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_vae_trained_on_crops_runs_on_whole_slices(tiny_data, tmp_path):
    """16 px crops of 32 px slices train it; it is measured and saved at 32 px."""
    run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
               tmp_path / "crop", "--train_crop", "16", "--max_train_steps", "3")
    metrics = json.loads((tmp_path / "crop" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["resolution"] == 32 and metrics["psnr"] > 0
    vae = AutoencoderKL.from_pretrained(tmp_path / "crop" / "vae")
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 1, 32, 32)).latent_dist.mode()
    assert latent.shape[-1] == 16  # whole 32 px slices in, f=2


def test_vae_two_cpu_processes(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "train_vae.py", "--config",
         str(TINY), "--data", str(tiny_data), "--output_dir", str(tmp_path / "ddp"),
         "--max_train_steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["images_seen"] == 3 * 8 * 2
    AutoencoderKL.from_pretrained(tmp_path / "ddp" / "vae")


def test_vae_ema_weights_are_what_is_saved_and_checkpointed(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from pipelines.config import load_config
    from pipelines.vae.trainer import train_vae

    cfg = load_config(TINY, ["--vae.ema_decay", "0.5", "--vae.ema_warmup", "false",
                             "--vae.max_train_steps", "4", "--vae.checkpointing_steps", "4",
                             "--vae.disc_weight", "0"])
    train_vae(cfg, tiny_data, tmp_path)
    saved = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    averaged = load_file(checkpoint / "ema" / "diffusion_pytorch_model.safetensors")
    raw = load_file(checkpoint / "model.safetensors")
    name = "encoder.conv_in.weight"
    assert torch.equal(saved[name], averaged[name])
    assert not torch.allclose(saved[name], raw[f"vae.{name}"])  # half-way to the last step's
