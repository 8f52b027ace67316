"""The StyleGAN2 baseline: its parts, its trainer on the shared loop, and the shared tools on it."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipelines.config import load_config
from pipelines.sampling import load_pipeline
from pipelines.stylegan2.networks import (
    ModulatedConv2d,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    diff_augment,
)
from pipelines.stylegan2.objective import StyleGAN2TrainingModel

from .conftest import ROOT, TINY, run_script


def test_demodulation_keeps_unit_scale_whatever_the_style():
    conv = ModulatedConv2d(16, 8, 3, w_dim=4)
    x = torch.randn(64, 16, 8, 8)
    for scale in (0.1, 10.0):
        w = torch.randn(64, 4) * scale
        std = conv(x, w)[:, :, 2:-2, 2:-2].std().item()  # away from the zero padding
        assert 0.7 < std < 1.3, (scale, std)


def test_generator_follows_the_label_and_truncation():
    torch.manual_seed(0)
    gen = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64,
                             channel_max=16)
    z = torch.randn(3, 8)
    nc = gen(z, torch.zeros(3, dtype=torch.long), noise_generator=torch.Generator().manual_seed(0))
    ad = gen(z, torch.ones(3, dtype=torch.long), noise_generator=torch.Generator().manual_seed(0))
    assert nc.shape == (3, 1, 16, 16) and not torch.allclose(nc, ad)
    gen.w_avg[1] = 5.0
    ws = gen.map(z, torch.ones(3, dtype=torch.long), truncation_psi=0.0)
    assert torch.allclose(ws, torch.full_like(ws, 5.0))  # psi 0: every style is the label's mean


def test_diff_augment_is_differentiable_and_checked():
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    out = diff_augment(x * 2 - 1, "color,translation,cutout", torch.Generator().manual_seed(0))
    out.sum().backward()
    assert out.shape == x.shape and x.grad is not None and x.grad.abs().sum() > 0
    assert (out == -1).float().mean() >= 0.2  # the cutout square (a quarter) is black
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diff_augment(x, "rotate")


def test_one_step_gives_each_network_only_its_own_gradient():
    import torch.nn.functional as F

    cfg = load_config(TINY).stylegan2
    cfg.augment, cfg.pl_weight, cfg.r1_gamma = "", 0.0, 0.0
    gen = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2,
                             channel_base=64, channel_max=16)
    disc = StyleGAN2Discriminator(16, 2, 64, 16)
    model = StyleGAN2TrainingModel(gen, disc, cfg)
    real, labels = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1])
    g_params, d_params = list(gen.parameters()), list(disc.parameters())
    torch.manual_seed(0)
    loss, _ = model((real, labels), step=1)
    total = torch.autograd.grad(loss, g_params + d_params, allow_unused=True)
    torch.manual_seed(0)  # the same z, mixing and noise, each network's own objective alone
    fake = gen.synthesis(model.styles(labels))
    g_loss = F.softplus(-disc(fake, labels)).mean()
    d_loss = F.softplus(disc(fake.detach(), labels)).mean() + F.softplus(-disc(real, labels)).mean()
    own = torch.autograd.grad(g_loss, g_params, allow_unused=True) + \
        torch.autograd.grad(d_loss, d_params)
    for got, want in zip(total, own, strict=True):
        if want is None:
            assert got is None or not got.abs().any()
        else:
            torch.testing.assert_close(got, want)


def test_regularisers_run_on_their_steps():
    cfg = load_config(TINY).stylegan2
    gen = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2,
                             channel_base=64, channel_max=16)
    model = StyleGAN2TrainingModel(gen, StyleGAN2Discriminator(16, 2, 64, 16), cfg)
    batch = (torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1]))
    _, logs0 = model(batch, step=0)  # r1_interval 2, pl_interval 3 in the tiny config
    _, logs1 = model(batch, step=1)
    assert {"r1", "pl_penalty"} <= set(logs0) and not {"r1", "pl_penalty"} & set(logs1)
    assert model.pl_mean > 0 and torch.isfinite(logs0["r1"])


def test_trained_folder_reloads_and_samples_both_labels(tiny_gan):
    index = json.loads((tiny_gan / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_stylegan2", "StyleGAN2Pipeline"]
    assert index["class_names"] == ["NC", "AD"]
    assert index["generator"] == ["stylegan2_networks", "StyleGAN2Generator"]
    assert (tiny_gan / "generator" / "stylegan2_networks.py").is_file()
    assert (tiny_gan / "generator" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tiny_gan / "metrics.json").read_text())["steps"] == 6
    assert list((tiny_gan / "samples").glob("step-*.png"))
    pipe = load_pipeline(tiny_gan)
    a = pipe(["AD", "NC"], 2, generator=torch.Generator().manual_seed(1), output_type="np").images
    b = pipe(["AD", "NC"], 2, generator=torch.Generator().manual_seed(1), output_type="np").images
    c = pipe(["AD", "NC"], 2, generator=torch.Generator().manual_seed(2), output_type="np").images
    assert a.shape == (4, 240, 256, 1) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert pipe("AD", output_type="pil").images[0].size == (256, 240)


def test_sample_evaluate_and_embed_take_a_stylegan2_model(tiny_gan, tiny_data, tmp_path):
    run_script("sample.py", "--model", tiny_gan, "--label", "all", "--num_images", "2",
               "--out", tmp_path / "s")
    assert len(list((tmp_path / "s" / "AD").glob("*.png"))) == 2
    run_script("evaluate.py", "--model", tiny_gan, "--data", tiny_data, "--out", tmp_path / "e",
               "--num_images", "4")
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert {"gen_AD", "gen_NC"} <= set(metrics["judge_acc"]) and metrics["fd"]["gen_vs_test"] > 0
    run_script("embed.py", "--model", tiny_gan, "--data", tiny_data, "--space", "judge",
               "--method", "tsne", "--with_generated", "4", "--out", tmp_path / "m")
    assert json.loads((tmp_path / "m" / "embedding.json").read_text())["counts"]["generated"][
        "total"] == 8
    proc = run_script("embed.py", "--model", tiny_gan, "--data", tiny_data, "--out",
                      tmp_path / "m2", check=False)
    assert proc.returncode == 2 and "--space judge" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--resolution", "48"], "power-of-two"),
    (["--augment", "rotate"], "color, translation, cutout"),
    (["--r1_interval", "0"], "r1_interval"),
])
def test_bad_input_exits_2(tiny_data, tmp_path, args, message):
    proc = run_script("train_stylegan2.py", "--config", TINY, "--data", tiny_data,
                      "--output_dir", tmp_path, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_two_cpu_processes(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29521", "train_stylegan2.py",
         "--config", str(TINY), "--data", str(tiny_data), "--output_dir", str(tmp_path / "ddp"),
         "--max_train_steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    pipe = load_pipeline(tmp_path / "ddp")
    assert pipe(["NC"], output_type="np").images.shape == (1, 240, 256, 1)
