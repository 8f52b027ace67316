"""What the full release needs: the shortlist memorisation search, networks on the device they
are given, evaluation split across processes, the memory-mapped half-precision latent cache."""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch

from pipelines import metrics
from pipelines.data import load_split
from pipelines.evaluation import MEMORISATION_CANDIDATES

from .conftest import run_script


@pytest.fixture(scope="module")
def real_slices(tiny_data):
    return load_split(tiny_data, "train", 32, progress=False), \
        load_split(tiny_data, "test", 32, progress=False)


def test_shortlist_finds_a_planted_copy_and_matches_the_exact_search(real_slices):
    train, test = real_slices
    # queries: the test slices, plus two train slices planted with a little noise (a copy)
    noise = torch.randint(-3, 4, (2, *train.pixels.shape[1:]), generator=torch.Generator()
                          .manual_seed(0))
    planted = (train.pixels[[5, 17]].int() + noise).clamp(0, 255).to(torch.uint8)
    queries = torch.cat([test.pixels, planted])
    exact_values, exact_index = metrics.nearest_ssim(queries, train.pixels)
    values, index = metrics.nearest_ssim(queries, train.pixels, candidates=4)
    assert index[-2:].tolist() == [5, 17] and (values[-2:] > 0.95).all()
    assert float((index == exact_index).double().mean()) >= 0.9
    assert (values <= exact_values + 1e-5).all()  # the shortlist never exceeds the true maximum
    same = index == exact_index
    torch.testing.assert_close(values[same], exact_values[same], atol=1e-5, rtol=0)
    assert MEMORISATION_CANDIDATES >= 4


def test_shortlist_holds_only_the_shortlisted_references_as_floats(real_slices, monkeypatch):
    train, test = real_slices
    sizes = []
    original = metrics._LocalStats.__init__

    def spy(self, images):
        sizes.append(len(images))
        original(self, images)

    monkeypatch.setattr(metrics._LocalStats, "__init__", spy)
    metrics.nearest_ssim(test.pixels[:4], train.pixels, candidates=2, max_elements=32 * 32 * 2)
    # one query per block, so each block's references are at most its 2 candidates
    assert sizes and max(sizes) <= 2


def test_latent_cache_is_half_precision_and_memory_mapped(tiny_vae_run, tiny_data, tmp_path):
    from pipelines.ldm.latents import build_latent_cache, encode_posterior
    from pipelines.vae.model import load_vae

    vae = load_vae(tiny_vae_run / "vae")
    slices = load_split(tiny_data, "train", 32, progress=False)
    cache = build_latent_cache(vae, slices, tmp_path, flip=True)
    (path,) = tmp_path.glob("latents-*.safetensors")
    maps = open("/proc/self/maps").read() if sys.platform == "linux" else ""
    if maps:
        assert str(path.resolve()) in maps  # read through a memory map, not into this process
    assert cache.mean.dtype == cache.flip_std.dtype == torch.float16
    exact, _ = encode_posterior(vae, slices.pixels, progress=False)
    relative = (cache.mean.float() - exact).abs().max() / exact.abs().max()
    assert 0 < relative < 2**-10  # fp16 rounding, no more
    drawn = cache.sample(torch.arange(3), 1.0, torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.float32 and drawn.shape == (3, *cache.mean.shape[1:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _numbers(tree, prefix=""):
    """{path: number} of every number in a metrics.json, leaving out timings."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() if key != "seconds"
                for k, v in _numbers(value, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree)
                for k, v in _numbers(value, f"{prefix}/{i}").items()}
    return {prefix: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) \
        else {}


def test_two_process_evaluation_equals_one_process(tiny_model, tiny_data, tmp_path):
    args = ["evaluate.py", "--model", tiny_model, "--data", tiny_data, "--num_images", "3",
            "--num_inference_steps", "1", "--device", "cpu"]
    run_script(*args, "--out", tmp_path / "one")
    proc = run_script("-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                      "--main_process_port", str(_free_port()), *args, "--out", tmp_path / "two")
    assert proc.stdout.count("wrote ") == 1  # only the main process reports and writes
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    a, b = _numbers(one), _numbers(two)
    assert a.keys() == b.keys() and len(a) > 50
    # a process samples its images in smaller batches, so a generated pixel can round to the
    # next grey level; every measure must stay within that (87 of 89 equal to 1e-4, two at 5e-4)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=2e-3, abs=1e-4), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_judge_and_classifiers_follow_the_device_they_are_given(real_slices, tmp_path):
    from pipelines.config import EvalConfig
    from pipelines.judge import judge_for, tstr_accuracy

    train, test = real_slices
    cfg = EvalConfig(judge_steps=4, tstr_steps=4, judge_batch_size=8)
    judge, _ = judge_for(train, cfg, tmp_path / "judge", device="cuda")
    assert judge.device.type == "cuda"
    assert judge.features(test.pixels).shape == (len(test), 256)
    again, reused = judge_for(train, cfg, tmp_path / "judge", device="cuda")
    assert reused and again.device.type == "cuda"
    level, _ = judge_for(train, cfg, tmp_path / "level", target="position", device="cuda")
    assert level.device.type == "cuda" and level.positions(test.pixels).shape == (len(test),)
    assert 0 <= tstr_accuracy(train.pixels, train.labels, test, cfg, device="cuda") <= 1


def test_decoding_in_worker_processes_gives_the_same_slices(tiny_data):
    one = load_split(tiny_data, "test", 32, progress=False)
    two = load_split(tiny_data, "test", 32, progress=False, num_workers=2)
    assert torch.equal(one.pixels, two.pixels) and one.files == two.files
    assert torch.equal(one.positions, two.positions)
