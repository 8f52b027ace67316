"""Synthetic subjects: the stack-conditioned UNet, pipe.subjects, sample.py --subjects and the
stack measures."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from pipelines.config import load_config
from pipelines.data import patient_id, slice_number
from pipelines.ldm.latents import LatentCache
from pipelines.ldm.pipeline_adni import stack_levels
from pipelines.ldm.stack import next_lower_slices, sample_with_neighbours, typical_stack_length
from pipelines.sampling import load_pipeline
from pipelines.stack_metrics import (
    adjacent_similarity,
    brain_extent,
    cross_stack_similarity,
    own_stack_nearest,
    shape_spread,
    stack_accuracy,
)

from .conftest import TINY, run_script, run_without_repo

STACK = ["--unet.level_conditioning", "true", "--unet.stack_conditioning", "true"]


@pytest.fixture(scope="module")
def tiny_stack_model(tiny_vae_run, tiny_data, tmp_path_factory):
    from pipelines.ldm.trainer import train_unet

    out = tmp_path_factory.mktemp("ldm_stack")
    train_unet(load_config(TINY, STACK), tiny_vae_run / "vae", tiny_data, out)
    return out


def subjects(pipe, seeds, label="AD", stack=None, steps=2):
    return pipe.subjects(label, num_subjects=len(seeds), stack=stack, num_inference_steps=steps,
                         generator=[torch.Generator().manual_seed(s) for s in seeds],
                         output_type="latent").images


def test_neighbours_are_the_next_lower_slice_of_the_same_patient():
    patients = ["b", "a", "a", "b", "a"]
    positions = torch.tensor([1.0, 0.5, 0.0, 0.0, 1.0])  # listing order is not slice order
    assert next_lower_slices(patients, positions).tolist() == [3, 2, -1, -1, 1]
    assert typical_stack_length(patients) in (2, 3)


def test_a_slice_and_its_neighbour_are_mirrored_together():
    n = 4
    mean = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).clone()
    cache = LatentCache(mean, torch.zeros_like(mean), torch.zeros(n, dtype=torch.long),
                        flip_mean=-mean, flip_std=torch.zeros_like(mean))
    below = torch.tensor([-1, 0, 1, 2])
    own, extra = sample_with_neighbours(cache, torch.tensor([1, 2, 3, 0] * 8), below, 1.0, 0.0,
                                        torch.Generator().manual_seed(0))
    present = extra[:, 1, 0, 0]
    flipped = own[:, 0, 0, 0] < 0
    assert set(flipped.tolist()) == {True, False}  # both happen
    for i in range(len(own)):
        if present[i]:  # the neighbour is one slice lower, on the same side of the mirror
            assert extra[i, 0, 0, 0] == own[i, 0, 0, 0] + (1 if flipped[i] else -1)
        else:
            assert (extra[i] == 0).all() and abs(own[i, 0, 0, 0]) == 0  # slice 0: none


def test_stack_levels_are_training_steps_and_refuse_too_many():
    assert stack_levels(3, 5) == [0.25, 0.5, 0.75]
    assert stack_levels(5, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="stack must be a whole number from 1 to 5"):
            stack_levels(bad, 5)
    with pytest.raises(ValueError, match="does not record"):
        stack_levels(3, None)


def test_subjects_are_deterministic_for_a_seed_and_read_their_neighbour(tiny_stack_model):
    pipe = load_pipeline(tiny_stack_model)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.stack_conditioned and pipe.config.stack_length == 4
    a, b = subjects(pipe, [3, 4]), subjects(pipe, [3, 4])
    assert a.shape == (2, 4, 2, 16, 16) and torch.equal(a, b)
    alone = subjects(pipe, [4])
    assert torch.allclose(alone[0], a[1], atol=1e-4)  # one generator per subject
    # slice 2 of the same noise with another slice 1 below it comes out different
    latents = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))

    def second_slice(below):
        pipe.scheduler.set_timesteps(2)
        with torch.no_grad():
            return pipe.denoise(latents.clone(), torch.tensor([1]), 1.0, pipe.scheduler,
                                pipe.scheduler.timesteps, None, torch.tensor([0.5]),
                                neighbours=torch.cat([below, torch.ones(1, 1, 16, 16)], 1))

    assert not torch.allclose(second_slice(a[0, :1]), second_slice(a[1, :1]))
    # the plain call still makes single slices (no neighbour)
    single = pipe("NC", num_inference_steps=2, slice_positions=0.5, output_type="np").images
    assert single.shape == (1, 240, 256, 1)


def test_sample_cli_writes_subjects_volumes_and_reslices(tiny_stack_model, tiny_data, tmp_path):
    out = tmp_path / "subjects"
    proc = run_script("sample.py", "--model", tiny_stack_model, "--label", "AD", "--subjects",
                      "2", "--stack", "3", "--data", tiny_data, "--out", out,
                      "--num_inference_steps", "2")
    assert "adjacent-slice SSIM" in proc.stdout
    files = sorted(p.name for p in (out / "AD").iterdir())
    assert len(files) == 6 and {patient_id(f) for f in files} == {"synthetic-AD-000",
                                                                   "synthetic-AD-001"}
    assert sorted({slice_number(f) for f in files}) == [0, 1, 2]
    record = json.loads((out / "subjects.json").read_text())
    info = record["labels"]["AD"]
    assert record["complete"] and info["real_patient"] and (out / info["reslice"]).is_file()
    assert info["measures"]["stacks"] == {"generated": 2, "real": 2, "slices_per_stack": 3}
    volume = nib.load(out / "volumes" / "synthetic-AD-000.nii.gz")
    assert volume.shape == (256, 240, 3) and volume.get_data_dtype() == np.uint8
    assert np.allclose(volume.header.get_zooms(), (0.95, 0.95, 1.2))
    assert volume.header.get_xyzt_units()[0] == "mm"
    assert b"AD" in volume.header["descrip"].tobytes()
    # the volume holds the written slices: the lowest slice is z = 0, image rows run down y
    lowest = np.asarray(volume.dataobj)[:, ::-1, 0].T
    from PIL import Image
    jpeg = np.asarray(Image.open(out / "AD" / "synthetic-AD-000_0.jpeg"))
    assert np.abs(lowest.astype(int) - jpeg).mean() < 3  # JPEG at quality 95


@pytest.mark.parametrize("args, message", [
    (["--stack", "0"], "--stack must be at least 1"),
    (["--stack", "5"], "--stack must be from 1 to 4"),
    (["--subjects", "0"], "--subjects must be a positive"),
    (["--slice_position", "0.5"], "does not go with --subjects"),
])
def test_subjects_bad_arguments_exit_2(tiny_stack_model, tmp_path, args, message):
    base = ["--subjects", "1"] if "--subjects" not in args else []
    proc = run_script("sample.py", "--model", tiny_stack_model, "--out", tmp_path, *base, *args,
                      check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_that_cannot_make_stacks_says_so(tiny_level_model, tmp_path):
    proc = run_script("sample.py", "--model", tiny_level_model, "--out", tmp_path,
                      "--subjects", "1", check=False)
    assert proc.returncode == 2 and "makes single slices only" in proc.stderr
    assert "Traceback" not in proc.stderr
    pipe = load_pipeline(tiny_level_model)
    with pytest.raises(ValueError, match="stack_conditioning"):
        pipe.subjects("AD")


def test_stack_folder_makes_subjects_in_plain_diffusers(tiny_stack_model, tmp_path):
    copy = shutil.copytree(tiny_stack_model, tmp_path / "model")
    code = f"""
import json, sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(copy)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
stacks = pipe.subjects("NC", num_subjects=2, stack=3, num_inference_steps=2,
                       generator=torch.manual_seed(0)).images
print(json.dumps({{"repo": any(m.split(".")[0] == "pipelines" for m in sys.modules),
                  "stacks": [[im.size for im in s] for s in stacks]}}))
"""
    got = json.loads(run_without_repo(code, cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert not got["repo"] and got["stacks"] == [[[256, 240]] * 3] * 2


def test_adjacent_and_cross_stack_similarity():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (3, 1, 32, 32)).astype(np.int16)
    smooth = np.clip(base + rng.integers(-3, 4, (3, 5, 32, 32)), 0, 255).astype(np.uint8)
    own, cross = adjacent_similarity(smooth), cross_stack_similarity(smooth)
    assert own["pairs"] == cross["pairs"] == 12
    assert own["ssim"] > 0.9 > cross["ssim"] and own["l1"] < 0.02 < cross["l1"]
    with pytest.raises(ValueError, match="at least two stacks"):
        cross_stack_similarity(smooth[:1])


def test_own_stack_nearest_and_stack_accuracy():
    features = np.array([[0.0], [0.1], [5.0], [5.1]])
    assert own_stack_nearest(features, [0, 0, 1, 1]) == 1.0
    assert own_stack_nearest(features, [0, 1, 0, 1]) == 0.0
    probs = [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4]]
    # stack a: mean (0.65, 0.35) -> 0 = its label; stack b: (0.4, 0.6) -> 1, its label is 0
    assert stack_accuracy(probs, ["a", "a", "b", "b"], [0, 0, 0, 0]) == 0.5
    with pytest.raises(ValueError, match="more than one label"):
        stack_accuracy(probs, ["a", "a", "b", "b"], [0, 1, 0, 0])


def test_shape_spread_is_relative_to_the_reference_at_each_level():
    def stacks(widths):  # one stack per row of widths: a bright box of that width per slice
        out = np.zeros((len(widths), len(widths[0]), 40, 40), np.uint8)
        for s, row in enumerate(widths):
            for k, w in enumerate(row):
                out[s, k, 10:30, 20 - w // 2 : 20 - w // 2 + w] = 200
        return out

    real = stacks([[10, 20, 30], [10, 20, 30]])  # the brain widens upwards, the same for all
    assert brain_extent(real)[0, :, 0].tolist() == [10, 20, 30]
    assert shape_spread(real, real) == 0.0  # normalised by level, a widening is no spread
    wobbly = stacks([[10, 30, 30]])
    assert shape_spread(wobbly, real) > 0.1


def test_a_killed_stack_run_resumes_bit_identical(tiny_vae_run, tiny_data, tmp_path):
    from .test_resume import (
        CHECKPOINT_WEIGHTS,
        KILL_AFTER,
        _assert_same_tensors,
        _finish,
        _ok,
        _start,
    )

    args = ["train_unet.py", "--config", str(TINY), "--data", str(tiny_data), "--vae",
            str(tiny_vae_run / "vae"), *STACK]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    first = _start(args, straight, 1)
    code, output = _finish(_start(args, interrupted, 1, kill_after=KILL_AFTER))
    assert code == -9, output[-4000:]
    _ok(_start(args, interrupted, 1, resume=True))
    _ok(first)
    for name in ["unet/diffusion_pytorch_model.safetensors", *CHECKPOINT_WEIGHTS]:
        _assert_same_tensors(straight / name, interrupted / name)
    assert json.loads((straight / "model_index.json").read_text())["stack_length"] == 4


def test_measures_against_real_patients_with_judges():
    from pipelines.judge import Judge, JudgeModel, judge_config
    from pipelines.subjects import measure_against_real

    torch.manual_seed(0)
    judges = [Judge(JudgeModel(judge_config(t)), 32) for t in ("label", "position")]
    rng = np.random.default_rng(0)
    generated = rng.integers(0, 255, (2, 3, 240, 256)).astype(np.uint8)
    real = {"p1": rng.integers(0, 255, (4, 240, 256)).astype(np.uint8),
            "p2": rng.integers(0, 255, (4, 240, 256)).astype(np.uint8),
            "short": rng.integers(0, 255, (2, 240, 256)).astype(np.uint8)}  # other levels
    report = measure_against_real(generated, real, 4, 0, 32, 1, *judges)
    assert report["stacks"] == {"generated": 2, "real": 2, "slices_per_stack": 3}
    for key in ("judge_stack_accuracy", "judge_own_stack_nearest", "level_error"):
        assert set(report[key]) == {"generated", "real"}
        assert all(0 <= v <= 1 for v in report[key].values())
    assert measure_against_real(generated, {"short": real["short"]}, 4, 0, 32, 1) is None
