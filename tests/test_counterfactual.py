"""The counterfactual pipeline: DDIM inversion round trip, the null edit, SDEdit, the posterior
change, inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.ldm.pipeline_adni import EDIT_DEFAULTS, ADNICounterfactualPipeline, guided_filter
from pipelines.sampling import load_pipeline

from .tolerance import ONE_ROUNDING, assert_grey_levels_close


@pytest.fixture(scope="module")
def edit(tiny_model):
    pipe = ADNICounterfactualPipeline.from_pipe(load_pipeline(tiny_model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def slices(tiny_data) -> list[Image.Image]:
    return [Image.open(p) for p in sorted((Path(tiny_data) / "test" / "NC").glob("*.jpeg"))[:2]]


def test_from_pipe_shares_the_components(tiny_model, edit):
    assert edit.config.guidance_scale == load_pipeline(tiny_model).config.guidance_scale
    assert type(edit.scheduler).__name__ == "DPMSolverMultistepScheduler"  # left as saved


def test_inversion_then_denoising_with_the_source_label_returns_the_source_latent(edit, slices):
    """DDIM inversion is exact as the step count grows: the round trip's error falls like
    1/steps (first order; a misaligned schedule would stop falling). Tolerance: relative L2
    error under 0.1 at 200 steps, on a tiny model trained 6 steps (the demo model: RESULTS)."""
    source = edit.encode(slices[:1])
    errors = {}
    for steps in (50, 200):
        back = edit(slices[:1], "NC", "NC", strength=1.0, method="inversion", guidance_scale=1.0,
                    num_inference_steps=steps, output_type="latent").images
        errors[steps] = float((back - source).norm() / source.norm())
    assert errors[200] < 0.1 and errors[200] < 0.5 * errors[50], errors


def test_the_null_edit_is_near_identity(edit, slices):
    """Target = source label, unguided, the change measured from the decoded source: the slice
    comes back nearly as it was. Measured from the null edit itself it is exact by design."""
    source = np.asarray(slices[0]).astype(float)
    same = edit(slices[0], "NC", "NC", strength=1.0, method="inversion", guidance_scale=1.0,
                num_inference_steps=200, change_from="reconstruction",
                output_type="np").images[0, ..., 0] * 255
    assert same.shape == source.shape == (240, 256)
    assert np.abs(same - source).mean() < 5.0  # grey levels of 255: 2 % of the range
    exact = edit(slices[0], "NC", "NC", strength=0.5, num_inference_steps=4,
                 output_type="np").images[0, ..., 0] * 255
    assert np.array_equal(np.rint(exact), source)


def test_the_guided_filter_gives_a_coarse_change_the_sources_edge():
    """A change drawn 4x coarser than the source (blurred across a ventricle-like wall) comes
    back with a step at the wall, where the source has its edge; no change stays exactly none."""
    from scipy.ndimage import gaussian_filter

    x = np.arange(64)
    guide = np.where(x < 30, 0.2, 0.8)[None].repeat(32, 0)  # a wall between columns 29 and 30
    sharp = np.where((x >= 26) & (x < 30), -0.2, 0.0)[None].repeat(32, 0)  # darkens inside it
    coarse = gaussian_filter(sharp, 4.0)
    refined = guided_filter(guide, coarse, radius=4)

    def jump(change):
        return abs(change[0, 29] - change[0, 30])

    assert jump(refined) > 2 * jump(coarse)
    assert np.array_equal(guided_filter(guide, np.zeros_like(guide), 4), np.zeros_like(guide))


def test_edge_weighting_gathers_a_change_onto_the_sources_edge_and_keeps_its_sum():
    """A uniform darkening beside a wall comes back on the wall: the (2 r + 1) pixels' worth of
    change around it gathered there (the row's sum kept within 10 %), none left far from it,
    and no change stays exactly none."""
    from pipelines.ldm.pipeline_adni import edge_weighted

    x = np.arange(64)
    guide = np.where(x < 30, 0.2, 0.8)[None].repeat(32, 0)
    change = np.full(guide.shape, -2.0)
    moved = edge_weighted(guide, change, radius=4)
    row = moved[16]
    assert np.abs(row[29:31]).min() > 4.0 and np.abs(row[:20]).max() < 1e-6
    assert row.sum() == pytest.approx(9 * -2.0, rel=0.1)  # the 2 r + 1 = 9 pixels nearest it
    assert np.array_equal(edge_weighted(guide, np.zeros_like(guide), 4), np.zeros_like(guide))


def test_sdedit_is_deterministic_with_a_generator_and_outputs_keep_their_size(edit, slices):
    def run(**kwargs):
        return edit(slices, "NC", "AD", strength=0.5, method="sdedit", num_inference_steps=4,
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    assert np.array_equal(run(output_type="np"), run(output_type="np"))
    assert [im.size for im in run()] == [(256, 240)] * 2
    for change_from in ("reconstruction", "none"):
        assert [im.size for im in run(change_from=change_from)] == [(256, 240)] * 2
    assert run(native_size=False, output_type="np").shape == (2, edit.resolution,
                                                              edit.resolution, 1)


@pytest.mark.kernels
def test_the_posterior_change_is_the_label_difference_and_exactly_none_for_the_same_label(
        edit, slices):
    """The posterior method: no change where target = source (the null edit is the source
    exactly, even beside an edited slice in the same batch); deterministic with generators (equal
    bytes for the same call); independent of batching in what it draws (each slice's noise comes
    from its own generator), so a slice edited alone matches it edited in a batch up to one
    rounding (``tolerance``: another batch size may sum in another order); extrapolation w
    scales the latent difference, so w = 3 changes the slice more than w = 1."""
    source = [np.asarray(s) for s in slices]

    def run(images, targets, seeds, **kwargs):
        out = edit(images, "NC", targets, method="posterior", num_draws=3,
                   strength=EDIT_DEFAULTS["posterior"]["strength"],
                   num_inference_steps=4, output_type="np",
                   generator=[torch.Generator().manual_seed(s) for s in seeds], **kwargs)
        return np.rint(out.images[..., 0] * 255).astype(np.uint8)

    both = run(slices, ["NC", "AD"], [0, 1])
    assert np.array_equal(both[0], source[0])  # the null edit, batched beside a real one
    assert np.abs(both[1].astype(float) - source[1]).mean() > 0.05
    alone = run(slices[1:], ["AD"], [1])[0]
    # batch-independent: the same draws, numbers equal to float rounding (1 grey level)
    assert_grey_levels_close(alone, both[1], ONE_ROUNDING)
    plain = edit(slices[1:], "NC", "AD", num_draws=3, num_inference_steps=4, output_type="np",
                 generator=[torch.Generator().manual_seed(1)]).images  # the defaults: edit.py's
    assert np.array_equal(np.rint(plain[0, ..., 0] * 255).astype(np.uint8),
                          alone)  # the same computation as ``alone``: equal bytes
    assert np.array_equal(run(slices, ["NC", "AD"], [0, 1]), both)  # deterministic
    stronger = run(slices[1:], ["AD"], [1], guidance_scale=3.0)[0]
    assert np.abs(stronger.astype(float) - source[1]).mean() > \
        np.abs(both[1].astype(float) - source[1]).mean()
    latents = edit(slices[1:], "NC", "AD", method="posterior", num_draws=2, num_inference_steps=4,
                   output_type="latent").images
    assert latents.shape == edit.encode(slices[1:]).shape


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "posterior", "change_from": "none"}, "change_from must be null_edit"),
    ({"method": "posterior", "num_draws": 0}, "num_draws must be"),
    ({"strength": 0.0}, "strength"), ({"strength": 1.5}, "strength"),
    ({"method": "ddpm"}, "unknown method"), ({"change_from": "x"}, "unknown change_from"),
    ({"refine": "bilateral"}, "unknown refine"),
    ({"refine": "warp"}, "edges, guided, none"),
    ({"target_labels": "MCI"}, "unknown label"),
    ({"images": [Image.new("RGB", (256, 240))]}, "mode RGB"),
    ({"target_labels": ["AD", "NC", "AD"]}, "one per image"),
])
def test_bad_arguments_are_named(edit, slices, kwargs, words):
    args = {"images": slices, "source_labels": "NC", "target_labels": "AD",
            "num_inference_steps": 2} | kwargs
    with pytest.raises(ValueError, match=words):
        edit(**args)


PLAIN_EDIT = """
import json, sys, numpy as np
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({folder!r}, trust_remote_code=True)
edit = sys.modules[type(pipe).__module__].ADNICounterfactualPipeline.from_pipe(pipe)
edit.set_progress_bar_config(disable=True)
slices = [np.full((240, 256), 90, dtype=np.uint8)] * 2
out = edit(slices, "NC", ["AD", "NC"], strength=0.5, num_inference_steps=2).images
print(json.dumps({{"cls": type(edit).__name__, "same_unet": edit.unet is pipe.unet,
                  "sizes": [list(im.size) + [im.mode] for im in out],
                  "repo_loaded": any(m.split(".")[0] == "pipelines" for m in sys.modules)}}))
"""


def test_the_saved_folder_edits_in_plain_diffusers(tiny_model, tmp_path):
    import json
    import shutil

    from .conftest import run_without_repo

    copy = shutil.copytree(tiny_model, tmp_path / "model")
    out = run_without_repo(PLAIN_EDIT.format(folder=str(copy)), cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"cls": "ADNICounterfactualPipeline", "same_unet": True,
                   "sizes": [[256, 240, "L"]] * 2, "repo_loaded": False}


def test_a_level_model_edits_at_the_slice_level(tiny_level_model, slices):
    """A level-conditioned model's edit keeps the slice's level: it is required, read by both
    the inversion and the denoising, and the null edit is still the source exactly."""
    edit = ADNICounterfactualPipeline.from_pipe(load_pipeline(tiny_level_model))
    edit.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="level-conditioned: give slice_positions"):
        edit(slices, "NC", "AD", num_inference_steps=2)
    with pytest.raises(ValueError, match="slice_positions must be numbers"):
        edit(slices, "NC", "AD", num_inference_steps=2, slice_positions=[0.2, 1.5])

    def run(levels):
        return edit(slices[:1], "NC", "AD", strength=0.5, method="inversion",
                    num_inference_steps=4, slice_positions=levels, output_type="latent").images

    assert not torch.allclose(run(0.1), run(0.9))
    assert torch.equal(run(0.1), run([0.1]))
    exact = edit(slices[0], "NC", "NC", strength=0.5, num_inference_steps=4, slice_positions=0.5,
                 output_type="np").images[0, ..., 0] * 255
    assert np.array_equal(np.rint(exact), np.asarray(slices[0]).astype(float))


def test_a_label_only_model_refuses_levels(edit, slices):
    with pytest.raises(ValueError, match="label-only"):
        edit(slices, "NC", "AD", num_inference_steps=2, slice_positions=0.5)
