"""Model folders as diffusers artefacts: load without this repository, one sampling truth."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from pipelines import files
from pipelines.hub import save_pipeline
from pipelines.ldm.pipeline_adni import (
    ADNIDiffusionPipeline,
    condition_inputs,
    guide,
    make_scheduler,
)
from pipelines.sampling import load_pipeline
from pipelines.slices import CLASS_NAMES, parse_label
from pipelines.stylegan2.pipeline_stylegan2 import StyleGAN2Pipeline

from .conftest import run_script, run_without_repo

PLAIN_DIFFUSERS = """
import json, sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else {folder!r},
                                         trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
kw = {kw}
pil = pipe(["AD", "NC"], generator=torch.manual_seed(0), **kw).images
arr = pipe([1, 0], generator=torch.manual_seed(0), output_type="np", **kw).images
pt = pipe("NC", generator=torch.manual_seed(0), output_type="pt", native_size=False, **kw).images
try:
    pipe(["MCI"], **kw)
    bad = "accepted"
except ValueError as err:
    bad = str(err)
print(json.dumps({{"cls": type(pipe).__name__, "module": type(pipe).__module__,
                  "repo_loaded": any(m.split(".")[0] == "pipelines" for m in sys.modules),
                  "pil": [list(im.size) + [im.mode] for im in pil],
                  "np": [list(arr.shape), str(arr.dtype), float(arr.min()), float(arr.max())],
                  "pt": list(pt.shape), "bad": bad}}))
"""


@pytest.mark.parametrize("kind", ["ldm", "stylegan2"])
def test_folder_samples_in_plain_diffusers_without_this_repository(kind, request, tmp_path):
    folder = request.getfixturevalue("tiny_model" if kind == "ldm" else "tiny_gan")
    copy = shutil.copytree(folder, tmp_path / "model")
    kw = {"num_inference_steps": 2} if kind == "ldm" else {}
    out = run_without_repo(PLAIN_DIFFUSERS.format(folder=str(copy), kw=kw), cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cls"] == ("ADNIDiffusionPipeline" if kind == "ldm" else "StyleGAN2Pipeline")
    assert got["module"].startswith("diffusers_modules") and not got["repo_loaded"]
    assert got["pil"] == [[256, 240, "L"]] * 2
    shape, dtype, low, high = got["np"]
    assert shape == [2, 240, 256, 1] and dtype == "float32" and 0 <= low <= high <= 1
    side = 32  # the tiny config's square
    assert got["pt"] == [1, 1, side, side]
    assert "unknown label 'MCI'" in got["bad"]


def test_level_folder_samples_at_its_levels_in_plain_diffusers(tiny_level_model, tmp_path):
    copy = shutil.copytree(tiny_level_model, tmp_path / "model")
    code = f"""
import json, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(copy)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
def run(levels):
    return pipe(["AD", "AD"], slice_positions=levels, num_inference_steps=2, output_type="np",
                generator=[torch.Generator().manual_seed(0) for _ in range(2)]).images
a, b = run([0.0, 1.0]), run([0.0, 1.0])
print(json.dumps({{"level": pipe.config.level_conditioned, "same": bool((a == b).all()),
                  "levels_differ": bool((a[0] != a[1]).any())}}))
"""
    got = json.loads(run_without_repo(code, cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert got == {"level": True, "same": True, "levels_differ": True}


@pytest.mark.parametrize("kind", ["ldm", "stylegan2"])
def test_model_card_has_hub_metadata_and_its_snippet_runs(kind, request, tmp_path):
    folder = request.getfixturevalue("tiny_model" if kind == "ldm" else "tiny_gan")
    copy = shutil.copytree(folder, tmp_path / "model")
    card = (copy / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: diffusers" in header and "tags:" in header
    cls = "ADNIDiffusionPipeline" if kind == "ldm" else "StyleGAN2Pipeline"
    assert f"diffusers:{cls}" in header
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    run_without_repo(snippet, cwd=copy)  # as written, from inside the folder
    assert len(list(copy.glob("sample_*.png"))) == 4


def test_repository_loads_its_own_class_from_the_same_code(tiny_model, tiny_gan):
    pipe = load_pipeline(tiny_model)
    assert type(pipe) is ADNIDiffusionPipeline
    import pipelines.ldm.pipeline_adni as module
    from pipelines.hub import portable_source

    assert (tiny_model / "pipeline_adni.py").read_text() == portable_source(module)
    assert type(load_pipeline(tiny_gan)) is StyleGAN2Pipeline


def test_saving_over_a_folder_never_leaves_a_component_missing(tiny_model, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    pipe = load_pipeline(folder)
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(1.0)
    save_pipeline(pipe, folder, "card")  # the atomic exchange path
    assert torch.equal(load_pipeline(folder).unet.conv_out.bias, pipe.unet.conv_out.bias)
    assert not list(folder.glob("*.old")) and not (folder / ".pipeline.tmp").exists()
    # Without an atomic exchange, a kill between moving the old copy aside and moving the new
    # one in leaves unet.old; loading puts it back rather than finding no unet at all.
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace = files.os.replace

    def killed(src, dst):
        if str(src).endswith(".pipeline.tmp/unet"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_pipeline(pipe, folder, "card")
    monkeypatch.undo()
    assert not (folder / "unet").exists() and (folder / "unet.old").is_dir()
    assert torch.equal(load_pipeline(folder).unet.conv_out.bias, pipe.unet.conv_out.bias)
    assert (folder / "unet").is_dir()


def test_pipeline_conventions_and_errors(tiny_model, tiny_gan):
    pipe = load_pipeline(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    by_name = pipe(["AD"], num_inference_steps=2, generator=torch.manual_seed(3),
                   output_type="pt").images
    by_id = pipe([1], num_inference_steps=2, generator=torch.manual_seed(3),
                 output_type="pt").images
    assert torch.equal(by_name, by_id) and by_name.shape == (1, 1, 240, 256)
    for bad in (dict(class_labels=["MCI"]), dict(class_labels=[], num_inference_steps=2),
                dict(class_labels=["AD"], guidance_scale=float("nan")),
                dict(class_labels=["AD"], output_type="square")):
        with pytest.raises(ValueError):
            pipe(**bad)
    gan = load_pipeline(tiny_gan)
    for bad in (dict(guidance_scale=2.0), dict(num_inference_steps=5)):
        with pytest.raises(ValueError, match="does not apply"):
            gan(["AD"], **bad)


def test_label_parsing_is_one_rule_everywhere(tiny_model, tmp_path):
    from pipelines.data import label_id
    from pipelines.errors import UserError

    pipe = load_pipeline(tiny_model)
    accepted = {"AD": 1, "ad": 1, " nc ": 0, "0": 0, "1": 1, 0: 0, 1: 1, np.int64(1): 1}
    rejected = ["MCI", "2", "-1", "", 2, -1, 1.0, True, None]
    for value, expected in accepted.items():
        assert parse_label(value) == expected == label_id(value) == pipe.label_ids([value])[0]
    for value in rejected:
        with pytest.raises(ValueError):
            parse_label(value)
        with pytest.raises(UserError):
            label_id(value)
        with pytest.raises(ValueError):
            pipe.label_ids([value])
    proc = run_script("sample.py", "--model", tiny_model, "--label", "ad", "--num_images", "1",
                      "--num_inference_steps", "1", "--out", tmp_path / "s")
    assert (tmp_path / "s" / "AD" / "AD_0000.png").is_file(), proc.stdout
    proc = run_script("sample.py", "--model", tiny_model, "--label", "MCI", check=False)
    assert proc.returncode == 2 and "unknown label 'MCI'" in proc.stderr


def _denoise(pipe, labels, guidance, steps, seed):
    """The documented sampler written out by hand: x <- step(uncond + s (cond - uncond))."""
    unet, scheduler = pipe.unet, pipe.scheduler
    shape = (len(labels), unet.config.in_channels, unet.config.sample_size,
             unet.config.sample_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    ids = torch.tensor(labels)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        cond = unet(x, t, **condition_inputs(unet, ids)).sample
        if guidance != 1:
            null = torch.full_like(ids, len(CLASS_NAMES))
            uncond = unet(x, t, **condition_inputs(unet, null)).sample
            cond = uncond + guidance * (cond - uncond)
        latents = scheduler.step(cond, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guidance_is_the_documented_formula(tiny_model, guidance):
    pipe = load_pipeline(tiny_model)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    got = pipe([1, 0], guidance_scale=guidance, num_inference_steps=3,
               generator=torch.Generator().manual_seed(4), output_type="latent").images
    want = _denoise(pipe, [1, 0], guidance, 3, seed=4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    u, c = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(guide(u, c, 1.0), c)
    torch.testing.assert_close(guide(u, c, 3.0), u + 3 * (c - u))


def test_class_embed_label_changes_the_output(tiny_model):
    pipe = load_pipeline(tiny_model)
    assert type(pipe.unet).__name__ == "UNet2DModel"  # the default conditioning
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    ad = pipe(["AD"], generator=torch.Generator().manual_seed(5), **kw).images
    nc = pipe(["NC"], generator=torch.Generator().manual_seed(5), **kw).images
    assert (ad - nc).abs().max() > 1e-3


@pytest.fixture(scope="module")
def resaved_model(tiny_model, tmp_path_factory):
    """The tiny model saved again with other sampling settings: DDIM, 3 steps, guidance 1.5
    where 0.5 < sigma <= 20."""
    folder = shutil.copytree(tiny_model, tmp_path_factory.mktemp("resaved") / "model")
    pipe = load_pipeline(folder)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.register_to_config(guidance_scale=1.5, num_inference_steps=3,
                            guidance_interval=[0.5, 20.0])
    save_pipeline(pipe, folder, (folder / "README.md").read_text())
    return folder


def test_every_entry_point_follows_the_saved_settings(resaved_model, tiny_data, tmp_path):
    want = {"scheduler": "ddim", "num_inference_steps": 3, "guidance_scale": 1.5,
            "guidance_interval": [0.5, 20.0]}
    assert load_pipeline(resaved_model).sampling_settings() == want
    run_script("sample.py", "--model", resaved_model, "--label", "AD", "--num_images", "1",
               "--out", tmp_path / "s")
    assert {k: json.loads((tmp_path / "s" / "sample.json").read_text())[k] for k in want} == want
    run_script("embed.py", "--model", resaved_model, "--data", tiny_data, "--with_generated",
               "2", "--method", "tsne", "--out", tmp_path / "e")
    assert json.loads((tmp_path / "e" / "embedding.json").read_text())["sampling"] == want
    run_script("evaluate.py", "--model", resaved_model, "--data", tiny_data, "--num_images", "4",
               "--out", tmp_path / "v")
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["sampling"] == want
    # a flag overrides the saved value the same way in each
    over = dict(want, num_inference_steps=2, scheduler="euler", guidance_interval=None)
    run_script("sample.py", "--model", resaved_model, "--label", "AD", "--num_images", "1",
               "--num_inference_steps", "2", "--scheduler", "euler", "--guidance_interval", "0",
               "inf", "--out", tmp_path / "s2")
    assert {k: json.loads((tmp_path / "s2" / "sample.json").read_text())[k] for k in want} == over
    run_script("embed.py", "--model", resaved_model, "--data", tiny_data, "--with_generated",
               "2", "--method", "tsne", "--num_inference_steps", "2", "--scheduler", "euler",
               "--guidance_interval", "0", "inf", "--out", tmp_path / "e2")
    assert json.loads((tmp_path / "e2" / "embedding.json").read_text())["sampling"] == over


def test_sampling_flags_on_a_gan_are_refused(tiny_gan, tmp_path):
    proc = run_script("sample.py", "--model", tiny_gan, "--guidance_scale", "2", "--out",
                      tmp_path, check=False)
    assert proc.returncode == 2 and "does not apply" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_folder_saved_before_portability_still_loads(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "old")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "ADNIDiffusionPipeline"  # the old layout: a bare class name
    del index["guidance_scale"], index["num_inference_steps"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "pipeline_adni.py").unlink()
    pipe = load_pipeline(folder)
    assert type(pipe) is ADNIDiffusionPipeline
    assert pipe.sampling_settings()["num_inference_steps"] == 4  # the tiny config's, from
    # the run's config.yaml
