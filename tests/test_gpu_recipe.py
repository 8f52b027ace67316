"""The GPU recipe, checked on the CPU: configs/adni256.yaml trains and samples at 256x240; the
precision, TF32, gradient checkpointing and process-scaling switches; trackers (TensorBoard, wandb
offline) get the validation grids; mistakes exit 2 with one message."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config import load_config
from pipelines.errors import UserError
from pipelines.training import (
    check_bf16,
    resolve_precision,
    scale_for_processes,
    scaling_note,
    set_tf32,
)
from tests.conftest import ROOT, TINY, run_script

ADNI256 = ROOT / "configs" / "adni256.yaml"


@pytest.mark.slow
def test_adni256_trains_a_step_and_samples_at_native_size(tiny_data, tmp_path):
    """The full-resolution config as shipped (widths, attention, level conditioning, sampler,
    guidance interval), one step of each stage at 256 px on the CPU, batch 2: minutes on 2
    cores (a 256 px VAE step, its validation and the held-out measures), so marked slow."""
    from pipelines.ldm.trainer import train_unet
    from pipelines.sampling import load_pipeline
    from pipelines.vae.trainer import train_vae

    small = ["--data.val_patients_fraction", "0.25", "--vae.max_train_steps", "1",
             "--vae.train_batch_size", "2", "--vae.scale_factor_images", "4",
             "--vae.disc_start_step", "0", "--unet.max_train_steps", "1",
             "--unet.train_batch_size", "2", "--unet.num_validation_images", "1",
             "--sample.num_inference_steps", "2"]
    cfg = load_config(ADNI256, small)
    assert cfg.data.resolution == 256 and cfg.unet.level_conditioning
    assert cfg.sample.scheduler == "sde-dpmsolver++" and cfg.sample.guidance_interval
    vae_metrics = train_vae(cfg, tiny_data, tmp_path / "vae")
    assert vae_metrics["steps"] == 1 and vae_metrics["resolution"] == 256
    assert math.isfinite(vae_metrics["psnr"]) and "ms_ssim" in vae_metrics
    metrics = train_unet(cfg, tmp_path / "vae" / "vae", tiny_data, tmp_path / "ldm")
    assert metrics["steps"] == 1 and metrics["latent_shape"] == [4, 64, 64]
    assert metrics["level_conditioned"]
    pipe = load_pipeline(tmp_path / "ldm")
    settings = pipe.sampling_settings()
    assert pipe.level_conditioned and settings["guidance_interval"] == [0.0, 10.9]
    assert settings["scheduler"] == "sde-dpmsolver++"
    out = pipe(["AD", "NC"], num_images_per_label=1, num_inference_steps=2,
               generator=torch.manual_seed(0), slice_positions=[0.5, 0.5])
    assert [im.size for im in out.images] == [(256, 240)] * 2
    assert all(np.asarray(im).std() > 0 for im in out.images)


def test_scale_lr_rule():
    """none: as written; linear/sqrt: the budget in samples (steps / N rounded up, EMA decay to
    the N-th power), LR x N or x sqrt N, the VAE's discriminator with it."""
    cfg = load_config(TINY, ["--vae.max_train_steps", "1000", "--vae.lr_warmup_steps", "50",
                             "--vae.learning_rate", "1e-4", "--vae.disc_learning_rate", "2e-4",
                             "--vae.disc_start_step", "300", "--vae.ema_decay", "0.999",
                             "--vae.checkpointing_steps", "250", "--vae.validation_steps", "100"])
    assert scale_for_processes(cfg.vae, 4) is cfg.vae  # scale_lr none: unchanged
    for rule, factor in (("linear", 3.0), ("sqrt", math.sqrt(3))):
        cfg.vae.scale_lr = rule
        assert scale_for_processes(cfg.vae, 1) is cfg.vae
        scaled = scale_for_processes(cfg.vae, 3)
        assert (scaled.max_train_steps, scaled.lr_warmup_steps, scaled.disc_start_step,
                scaled.checkpointing_steps, scaled.validation_steps) == (334, 17, 100, 84, 34)
        assert scaled.learning_rate == pytest.approx(1e-4 * factor)
        assert scaled.disc_learning_rate == pytest.approx(2e-4 * factor)
        assert scaled.ema_decay == pytest.approx(0.999 ** 3)
        assert scaled.train_batch_size == cfg.vae.train_batch_size  # per process, as written
        assert cfg.vae.max_train_steps == 1000  # the config itself is left as it was
        assert "max_train_steps 1000 -> 334" in scaling_note(cfg.vae, scaled)


def test_mixed_precision_from_the_launcher_unless_set(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("no") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # `accelerate launch`'s choice
    assert resolve_precision("auto") == "no"
    assert load_config(ADNI256).unet.mixed_precision == "auto"
    assert load_config(ADNI256).stylegan2.mixed_precision == "no"  # set in the YAML: it wins


def test_bf16_on_a_gpu_without_it_is_refused():
    check_bf16("bf16", "NVIDIA A100-SXM4-80GB", True)
    check_bf16("fp16", "Tesla V100-SXM2-32GB", False)
    with pytest.raises(UserError, match="Tesla V100.*--mixed_precision fp16"):
        check_bf16("bf16", "Tesla V100-SXM2-32GB", False)


def test_bf16_on_a_gpu_without_it_exits_2(tiny_data, tmp_path, monkeypatch, capsys):
    """The trainer's own path to the check, with a pre-Ampere GPU reported by torch."""
    import train_vae

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(SystemExit) as stop:
        train_vae.main(["--config", str(TINY), "--data", str(tiny_data), "--output_dir",
                        str(tmp_path / "vae"), "--mixed_precision", "bf16"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Tesla T4" in err and "Traceback" not in err


def test_tf32_switch():
    try:
        set_tf32(False)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        set_tf32(True)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        set_tf32(True)


def _loss_and_grads(model, loss_fn, checkpointing: bool):
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    model.train().zero_grad()
    torch.manual_seed(1)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(stage):
    from pipelines.ldm.objective import diffusion_loss, training_scheduler
    from pipelines.ldm.unet import build_unet
    from pipelines.vae.model import build_vae
    from pipelines.vae.objective import VAETrainingModel

    cfg = load_config(TINY, ["--unet.level_conditioning", "true"])
    torch.manual_seed(0)
    if stage == "vae":
        model = build_vae(cfg.vae, 32)
        training = VAETrainingModel(model, None, cfg.vae)
        images = torch.rand(2, 1, 32, 32) * 2 - 1

        def loss_fn():
            return training(images, 0)[0]
    else:
        model = build_unet(cfg.unet, 2, 16)
        scheduler = training_scheduler(cfg.unet)
        latents = torch.randn(2, 2, 16, 16)

        def loss_fn():
            return diffusion_loss(model, scheduler, latents, torch.tensor([0, 1]), 0.0,
                                  slice_positions=torch.tensor([0.2, 0.8])).mean()
    plain_loss, plain_grads = _loss_and_grads(model, loss_fn, False)
    ckpt_loss, ckpt_grads = _loss_and_grads(model, loss_fn, True)
    assert model.is_gradient_checkpointing
    assert torch.equal(plain_loss, ckpt_loss)
    assert len(plain_grads) == len(ckpt_grads) > 0
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_key_reaches_the_models(tiny_data, tiny_vae_run, tmp_path):
    from pipelines.ldm.trainer import train_unet

    cfg = load_config(TINY, ["--unet.gradient_checkpointing", "true", "--unet.max_train_steps",
                             "2", "--unet.validation_steps", "2", "--unet.checkpointing_steps",
                             "2"])
    metrics = train_unet(cfg, tiny_vae_run / "vae", tiny_data, tmp_path / "ldm")
    assert metrics["steps"] == 2
    assert "gradient_checkpointing: true" in (tmp_path / "ldm" / "config.yaml").read_text()


def test_wandb_offline_logs_the_validation_grid(tiny_data, tiny_vae_run, tmp_path, monkeypatch):
    """report_to wandb with WANDB_MODE=offline (no network): the run folder holds the losses and
    the validation grid as an image."""
    from pipelines.ldm.trainer import train_unet

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    cfg = load_config(TINY, ["--unet.report_to", "tensorboard,wandb", "--unet.max_train_steps",
                             "2", "--unet.validation_steps", "2", "--unet.checkpointing_steps",
                             "2", "--unet.log_steps", "1"])
    train_unet(cfg, tiny_vae_run / "vae", tiny_data, tmp_path / "ldm")
    runs = list((tmp_path / "ldm" / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = list((runs[0] / "files" / "media" / "images").glob("samples_2_*.png"))
    assert len(images) == 1
    logged = np.asarray(Image.open(images[0]).convert("L"))
    saved = np.asarray(Image.open(tmp_path / "ldm" / "samples" / "step-000002.png"))
    assert logged.shape == saved.shape and np.array_equal(logged, saved)
    assert list(runs[0].glob("run-*.wandb"))  # the losses, for `wandb sync`
    events = list((tmp_path / "ldm" / "logs" / "unet").glob("events.out.tfevents.*"))
    assert events  # TensorBoard beside it


def test_bad_report_to_exits_2(tiny_data, tmp_path):
    proc = run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
                      tmp_path / "vae", "--report_to", "mlflow", check=False)
    assert proc.returncode == 2
    assert "report_to" in proc.stderr and "tensorboard, wandb" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "vae").exists()


def test_help_lists_the_config_keys():
    proc = run_script("train_unet.py", "--help")
    for key in ("--unet.gradient_checkpointing false", "--unet.scale_lr none",
                "--unet.report_to tensorboard", "--unet.mixed_precision auto",
                "--data.resolution 64", "--sample.guidance_scale"):
        assert key in proc.stdout, key
    assert "--vae.kl_weight" in run_script("train_vae.py", "--help").stdout



def test_launch_files_are_what_accelerate_reads():
    """The README's launch files: Accelerate parses each; the SLURM script is valid bash that
    launches both trainers through the multi-node file."""
    import subprocess

    from accelerate.commands.config.config_args import load_config_from_file

    seen = {}
    for name in ("one_gpu", "multi_gpu", "multi_node"):
        c = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
        seen[name] = (str(c.distributed_type), c.num_machines, c.num_processes,
                      c.mixed_precision)
    assert seen == {"one_gpu": ("DistributedType.NO", 1, 1, "bf16"),
                    "multi_gpu": ("DistributedType.MULTI_GPU", 1, 8, "bf16"),
                    "multi_node": ("DistributedType.MULTI_GPU", 2, 16, "bf16")}
    script = ROOT / "examples" / "slurm_train.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "examples/accelerate/multi_node.yaml" in text
    assert "train_vae.py" in text and "train_unet.py" in text


def test_projection_counts_each_stage():
    """bench.project_gpu on the tiny config: work from the config, time from FLOPs and the rate,
    memory from parameters and saved activations, sampling passes from the guidance interval."""
    from bench.project_gpu import markdown, project

    cfg = load_config(TINY, ["--sample.guidance_interval", "[0, 10.9]"])
    record = project(cfg, 100.0, 50)
    stages = record["stages"]
    assert list(stages) == ["vae", "cache", "unet", "sample"]
    assert stages["unet"]["images"] == cfg.unet.max_train_steps * cfg.unet.train_batch_size
    assert stages["cache"]["images"] == 100  # every slice and its mirror image
    for s in stages.values():
        assert s["flops_per_image"] > 0
        assert s["hours_1_gpu"] == pytest.approx(
            s["images"] * s["flops_per_image"] / 100e12 / 3600)
        assert s["memory_gib"] * 2**30 >= s["state_bytes"] > 0
    assert stages["unet"]["activation_bytes_per_image"] > 0
    detail = stages["sample"]["detail"]
    steps = cfg.sample.num_inference_steps
    assert steps < detail["unet_passes"] < 2 * steps  # the noisiest steps are not guided
    assert stages["sample"]["flops_per_image"] == (detail["unet_passes"]
                                                   * detail["unet_forward_flops"]
                                                   + detail["decode_flops"])
    assert "| unet | train the UNet: 6 steps x 8 |" in markdown(record, "tiny")
