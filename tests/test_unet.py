import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from pipelines.config import load_config
from pipelines.data import load_split
from pipelines.hub import save_pipeline
from pipelines.ldm.latents import build_latent_cache
from pipelines.ldm.objective import diffusion_loss, drop_labels, min_snr_weight, training_scheduler
from pipelines.ldm.pipeline_adni import (
    ADNIDiffusionPipeline,
    condition_inputs,
    guided_steps,
    make_scheduler,
    noise_level,
)
from pipelines.ldm.unet import build_unet
from pipelines.sampling import generate, load_pipeline, sampling_settings
from pipelines.vae.model import load_vae

from .conftest import ROOT, TINY, run_script, with_overrides


def test_pipeline_folder_is_a_diffusers_folder(tiny_model):
    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_adni", "ADNIDiffusionPipeline"]
    assert (tiny_model / "pipeline_adni.py").is_file() and (tiny_model / "slices.py").is_file()
    assert index["class_names"] == ["NC", "AD"]
    for part in ("vae", "unet"):
        assert (tiny_model / part / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_model / "scheduler" / "scheduler_config.json").is_file()
    assert "AD" in (tiny_model / "README.md").read_text()
    assert json.loads((tiny_model / "metrics.json").read_text())["steps"] == 6


@pytest.mark.parametrize("scheduler", ["dpmsolver++", "sde-dpmsolver++", "ddim", "euler", "ddpm"])
def test_reload_and_sample_both_labels(tiny_model, scheduler):
    pipe = load_pipeline(tiny_model)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_images_per_label=2, num_inference_steps=3, guidance_scale=2.0,
                  output_type="np")
    a = pipe(["AD", "NC"], generator=torch.Generator().manual_seed(1), **kwargs).images
    b = pipe(["AD", "NC"], generator=torch.Generator().manual_seed(1), **kwargs).images
    c = pipe(["AD", "NC"], generator=torch.Generator().manual_seed(2), **kwargs).images
    assert a.shape == (4, 240, 256, 1) and a.dtype == np.float32  # diffusers' np: NHWC in [0, 1]
    assert 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    pil = pipe([1], num_inference_steps=2, output_type="pil").images[0]
    assert pil.size == (256, 240) and pil.mode == "L"


@pytest.mark.kernels
@pytest.mark.parametrize("scheduler", ["dpmsolver++", "sde-dpmsolver++"])
def test_images_do_not_depend_on_batch_size(tiny_model, scheduler):
    pipe = load_pipeline(tiny_model)  # the SDE sampler's noise comes from each image's generator
    settings = sampling_settings(pipe, scheduler=scheduler, guidance_scale=2.0,
                                 num_inference_steps=3)
    kwargs = dict(seed=3, settings=settings, progress=False)
    big = generate(pipe, "AD", 4, batch_size=4, **kwargs)
    small = generate(pipe, "AD", 4, batch_size=3, **kwargs)
    np.testing.assert_allclose(big.astype(int), small.astype(int), atol=1)


@pytest.mark.kernels
def test_guidance_interval_guides_only_its_noise_levels(tiny_model, tmp_path):
    pipe = load_pipeline(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(6)
    sigmas = [noise_level(pipe.scheduler, t) for t in pipe.scheduler.timesteps]
    assert sigmas == sorted(sigmas, reverse=True)
    middle = (sigmas[4], sigmas[1])  # guides steps 2, 3 and 4 of six
    assert guided_steps(pipe.scheduler, pipe.scheduler.timesteps, middle) == \
        [False, True, True, True, False, False]

    def make(**kwargs):
        return pipe(["AD", "NC"], num_images_per_label=2, num_inference_steps=6, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    guided = make(guidance_scale=3.0, guidance_interval=None)
    unguided = make(guidance_scale=1.0)
    assert np.array_equal(make(guidance_scale=3.0, guidance_interval=(0, float("inf"))), guided)
    assert np.array_equal(make(guidance_scale=3.0, guidance_interval=(0, sigmas[-1] / 2)), unguided)
    partial = make(guidance_scale=3.0, guidance_interval=middle)
    assert not np.array_equal(partial, guided) and not np.array_equal(partial, unguided)
    with pytest.raises(ValueError, match="0 <= low < high"):
        make(guidance_interval=(2.0, 1.0))
    # saved with the model: the default of every call and of every script, a flag over it
    pipe.register_to_config(guidance_interval=list(middle), guidance_scale=3.0)
    save_pipeline(pipe, tmp_path / "m", card="a test model")
    again = load_pipeline(tmp_path / "m")
    assert again.sampling_settings()["guidance_interval"] == list(middle)
    assert np.array_equal(again(["AD", "NC"], num_images_per_label=2, num_inference_steps=6,
                                output_type="np", generator=torch.Generator().manual_seed(0),
                                ).images, partial)
    every_step = sampling_settings(again, guidance_interval=[0, float("inf")])
    assert every_step["guidance_interval"] is None


def test_label_dropout_and_min_snr():
    labels = torch.zeros(10000, dtype=torch.long)
    dropped = drop_labels(labels, 0.15, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 2}
    assert 0.13 < (dropped == 2).float().mean() < 0.17
    snr = torch.tensor([0.1, 5.0, 100.0])
    assert torch.allclose(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.05]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "v_prediction"),
                          torch.tensor([0.1 / 1.1, 5 / 6, 5 / 101]))


@pytest.mark.parametrize("prediction_type,conditioning", [
    ("epsilon", "class_embed"), ("v_prediction", "class_embed"), ("epsilon", "cross_attention")])
def test_diffusion_loss_decreases_on_one_batch(prediction_type, conditioning):
    cfg = load_config(TINY, [f"--prediction_type={prediction_type}",
                             f"--conditioning={conditioning}"], section="unet").unet
    torch.manual_seed(0)
    unet = build_unet(cfg, latent_channels=2, latent_size=8)
    scheduler = training_scheduler(cfg)
    latents, labels = torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,))
    opt = torch.optim.Adam(unet.parameters(), 3e-3)
    losses = []
    for step in range(30):
        gen = torch.Generator().manual_seed(step % 2)
        loss = diffusion_loss(unet, scheduler, latents, labels, 5.0, gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])


def test_cross_attention_unet_reads_the_label_as_a_token(tiny_vae_run, tiny_data, tmp_path):
    out = tmp_path / "ldm"
    run_script("train_unet.py", "--config", TINY, "--vae", tiny_vae_run / "vae", "--data",
               tiny_data, "--output_dir", out, "--conditioning", "cross_attention")
    pipe = load_pipeline(out)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.unet.config.encoder_hid_dim == 3  # NC, AD, null: one-hot token -> Linear
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_images_per_label=2, num_inference_steps=3, guidance_scale=3.0,
                  output_type="np")
    a = pipe(["AD", "NC"], generator=torch.Generator().manual_seed(1), **kwargs).images
    b = pipe(["AD", "NC"], generator=torch.Generator().manual_seed(1), **kwargs).images
    assert a.shape == (4, 240, 256, 1) and np.array_equal(a, b)
    one = dict(kwargs, num_images_per_label=1)  # same noise, other label: the token is read
    ad = pipe(["AD"], generator=torch.Generator().manual_seed(5), **one).images
    nc = pipe(["NC"], generator=torch.Generator().manual_seed(5), **one).images
    assert not np.array_equal(ad, nc)


def test_unknown_conditioning_exits_2(tiny_vae_run, tiny_data, tmp_path):
    proc = run_script("train_unet.py", "--config", TINY, "--vae", tiny_vae_run / "vae", "--data",
                      tiny_data, "--output_dir", tmp_path, "--conditioning", "film", check=False)
    assert proc.returncode == 2 and "unet.conditioning" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_latent_cache_is_keyed_by_vae_and_data(tiny_vae_run, tiny_data, tmp_path):
    vae = load_vae(tiny_vae_run / "vae")
    slices = load_split(tiny_data, "train", 32, progress=False)
    a = build_latent_cache(vae, slices, tmp_path, flip=True)
    again = build_latent_cache(vae, slices, tmp_path, flip=True)
    assert a.key == again.key and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert a.mean.shape == (len(slices), 2, 16, 16) and a.flip_mean is not None
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.1)
        vae.encoder.conv_in.bias.add_(0.1)
    changed = build_latent_cache(vae, slices, tmp_path, flip=True)
    assert changed.key != a.key and not torch.equal(changed.mean, a.mean)
    subset = slices.subset(range(len(slices) - 1))
    assert build_latent_cache(vae, subset, tmp_path, flip=True).key != changed.key
    samples = a.sample(torch.arange(4), 2.0, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 2, 16, 16)


@pytest.mark.kernels
def test_sample_cli_writes_pngs_grid_and_sidecar(tiny_model, tmp_path):
    out = tmp_path / "s"
    run_script("sample.py", "--model", tiny_model, "--label", "AD", "--num_images", "3",
               "--seed", "5", "--num_inference_steps", "2", "--out", out)
    files = sorted((out / "AD").glob("*.png"))
    assert len(files) == 3 and (out / "grid_AD.png").is_file()
    assert Image.open(files[0]).size == (256, 240) and Image.open(files[0]).mode == "L"
    record = json.loads((out / "sample.json").read_text())
    assert record["seed"] == 5 and record["num_inference_steps"] == 2
    assert record["scheduler"] == "dpmsolver++" and "AD" in record["labels"]
    first = np.asarray(Image.open(files[0]))
    run_script("sample.py", "--model", tiny_model, "--label", "AD", "--num_images", "3",
               "--seed", "5", "--num_inference_steps", "2", "--out", tmp_path / "again")
    again = np.asarray(Image.open(tmp_path / "again" / "AD" / "AD_0000.png"))
    assert np.array_equal(again, first)  # same command, same seed: the same images
    run_script("sample.py", "--model", tiny_model, "--label", "AD", "--num_images", "1",
               "--seed", "5", "--num_inference_steps", "2", "--out", tmp_path / "one")
    alone = np.asarray(Image.open(tmp_path / "one" / "AD" / "AD_0000.png")).astype(int)
    # per-image seeds: a different batch changes only float rounding (oneDNN kernels)
    assert np.abs(alone - first.astype(int)).max() <= 2


@pytest.mark.parametrize("args, message", [
    (["--label", "MCI"], "unknown label"),
    (["--num_images", "0"], "positive"),
    (["--num_images", "-2"], "positive"),
    (["--guidance_scale", "0.5"], "1 means no guidance"),
    (["--model", "/no/such/model"], "no model at"),
])
def test_sample_bad_input_exits_2(tiny_model, tmp_path, args, message):
    proc = run_script("sample.py", *with_overrides(["--model", tiny_model, "--out", tmp_path],
                                                   args), check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_sample_rejects_a_folder_that_is_not_this_pipeline(tiny_vae_run, tmp_path):
    proc = run_script("sample.py", "--model", tiny_vae_run, "--out", tmp_path, check=False)
    assert proc.returncode == 2 and "not a model of this project" in proc.stderr


def test_unet_two_cpu_processes(tiny_vae_run, tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29519", "train_unet.py",
         "--config", str(TINY), "--vae", str(tiny_vae_run / "vae"), "--data", str(tiny_data),
         "--output_dir", str(tmp_path / "ddp"), "--max_train_steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    pipe = load_pipeline(tmp_path / "ddp")
    assert pipe(["NC"], num_inference_steps=2, output_type="np").images.shape == (1, 240, 256, 1)


# ----------------------------------------------------------------------------- slice levels


def test_level_condition_changes_the_output_and_guidance_stays_on_the_label(tiny_level_model):
    pipe = load_pipeline(tiny_level_model)
    assert pipe.level_conditioned and pipe.config.level_conditioned
    assert json.loads((tiny_level_model / "model_index.json").read_text())["level_conditioned"]
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, guidance_scale=2.0, output_type="latent")

    def latents(label, level):
        return pipe([label], slice_positions=level, generator=torch.Generator().manual_seed(5),
                    **kw).images

    low, high = latents("AD", 0.0), latents("AD", 1.0)
    assert (low - high).abs().max() > 1e-3
    assert (latents("NC", 0.0) - low).abs().max() > 1e-3
    assert torch.equal(latents("AD", 0.0), low)  # deterministic


@pytest.mark.kernels
def test_level_model_samples_at_requested_levels_after_reload(tiny_level_model, tmp_path):
    pipe = load_pipeline(tiny_level_model)
    settings = sampling_settings(pipe, num_inference_steps=2)
    kw = dict(seed=1, batch_size=4, settings=settings, progress=False)
    levels = np.array([0.0, 0.25, 0.5, 1.0])
    once = generate(pipe, "AD", 4, positions=levels, **kw)
    again = generate(load_pipeline(tiny_level_model), "AD", 4, positions=levels, **kw)
    np.testing.assert_array_equal(once, again)
    # image i at level p is image i of a batch at that one level: seeds do not depend on level
    single = generate(pipe, "AD", 4, positions=0.25, batch_size=2, seed=1, settings=settings,
                      progress=False)
    np.testing.assert_allclose(single[1].astype(int), once[1].astype(int), atol=1)
    out = tmp_path / "s"
    run_script("sample.py", "--model", tiny_level_model, "--label", "AD", "--slice_position",
               "all", "3", "--num_images", "2", "--num_inference_steps", "2", "--out", out)
    record = json.loads((out / "sample.json").read_text())
    assert record["slice_positions"] == [0.0, 0.5, 1.0]
    assert sorted(p.name for p in (out / "AD").iterdir())[:2] == ["AD_pos0.000_0000.png",
                                                                "AD_pos0.000_0001.png"]
    grid = np.asarray(Image.open(out / "grid_AD.png"))
    assert grid.shape[1] > grid.shape[0]  # 3 columns (levels) by 2 rows (seeds)


def test_label_only_model_refuses_levels_and_bad_levels_are_named(tiny_model, tiny_level_model):
    pipe = load_pipeline(tiny_model)
    assert not pipe.level_conditioned and not pipe.config.level_conditioned
    with pytest.raises(ValueError, match="label-only"):
        pipe(["AD"], slice_positions=0.5, num_inference_steps=1)
    level = load_pipeline(tiny_level_model)
    for bad in (-0.1, 1.5, float("nan"), "0.3", [0.2, "x"]):
        with pytest.raises(ValueError, match=r"slice_positions must be numbers in \[0, 1\]"):
            level(["AD"], slice_positions=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="3 entries"):
        level(["AD", "NC"], slice_positions=[0.1, 0.2, 0.3], num_inference_steps=1)


def test_level_unet_is_the_label_only_unet_plus_a_level_path():
    """The label keeps its own table, the mid block keeps two ResNets and self-attention: the
    level-conditioned UNet has the label-only one's parameters plus the level MLP."""
    cfg = load_config(TINY, section="unet").unet
    torch.manual_seed(0)
    label_only = build_unet(cfg, latent_channels=2, latent_size=8)
    cfg.level_conditioning = True
    level = build_unet(cfg, latent_channels=2, latent_size=8)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert level.class_embedding.weight.shape == label_only.class_embedding.weight.shape
    assert len(level.mid_block.resnets) == 2 and len(level.mid_block.attentions) == 1
    assert count(level.mid_block) == count(label_only.mid_block)
    assert count(level) == count(label_only) + count(level.add_embedding)
    latents, t = torch.randn(2, 2, 8, 8), torch.tensor([500, 500])
    kw = lambda labels, levels: condition_inputs(  # noqa: E731
        level, torch.tensor(labels), torch.tensor(levels))
    with torch.no_grad():
        base = level(latents, t, **kw([1, 1], [0.2, 0.2])).sample
        assert (level(latents, t, **kw([0, 0], [0.2, 0.2])).sample - base).abs().max() > 1e-4
        assert (level(latents, t, **kw([1, 1], [0.8, 0.8])).sample - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="give slice_positions"):
        condition_inputs(level, torch.tensor([1]))


def first_format_level_unet(cfg, latent_channels: int, latent_size: int) -> UNet2DConditionModel:
    """The level-conditioned UNet's first format: one projection MLP reading
    [one-hot label, level sinusoids], diffusers' attention-free mid block."""
    widths = tuple(cfg.block_out_channels)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=widths, layers_per_block=cfg.layers_per_block,
        norm_num_groups=min(32, min(widths)), down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2D", attention_head_dim=cfg.attention_head_dim,
        class_embed_type="projection", projection_class_embeddings_input_dim=3 + 64)


def test_a_first_format_level_folder_still_samples(tiny_level_model, tmp_path):
    pipe = load_pipeline(tiny_level_model)
    cfg = load_config(TINY, section="unet").unet
    torch.manual_seed(0)
    old = first_format_level_unet(cfg, pipe.unet.config.in_channels, pipe.unet.config.sample_size)
    folder = tmp_path / "old"
    save_pipeline(ADNIDiffusionPipeline(pipe.vae, old, pipe.scheduler, guidance_scale=2.0,
                                        num_inference_steps=2), folder, "first format")
    reloaded = load_pipeline(folder)
    assert reloaded.unet.config.class_embed_type == "projection" and reloaded.level_conditioned
    reloaded.set_progress_bar_config(disable=True)

    def run(levels):
        return reloaded(["AD", "AD"], slice_positions=levels, output_type="latent",
                        generator=[torch.Generator().manual_seed(0) for _ in range(2)]).images

    a = run([0.0, 1.0])
    assert torch.equal(a, run([0.0, 1.0])) and (a[0] - a[1]).abs().max() > 1e-4


def test_latent_cache_serves_the_slice_levels(tiny_vae_run, tiny_data, tmp_path):
    """Levels come from the slice set, not the file: a cache written before levels existed
    (same key) still serves, with the levels of the names."""
    vae = load_vae(tiny_vae_run / "vae")
    train = load_split(tiny_data, "train", 32, progress=False)
    cache = build_latent_cache(vae, train, tmp_path, flip=False)
    assert torch.equal(cache.positions, train.positions) and len(cache.positions) == len(cache)
