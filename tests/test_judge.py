"""pipelines.judge on a toy two-class set at 32 px: NC = filled disk, AD = ring."""

import json

import numpy as np
import pytest
import torch

from pipelines import judge as judge_mod
from pipelines.config import EvalConfig
from pipelines.data import SliceSet
from pipelines.metrics import frechet_distance

from .tolerance import assert_features_close

SIZE = 32
CFG = EvalConfig(judge_steps=80, judge_batch_size=32, judge_learning_rate=2e-3)


def toy_set(patients_per_class=12, slices=8, seed=0, prefix="p") -> SliceSet:
    """Each fake patient has its own centre and radius; slices vary a little around them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    pixels, labels, patients = [], [], []
    for label in (0, 1):
        for p in range(patients_per_class):
            centre = rng.uniform(0.35, 0.65, 2) * SIZE
            radius = rng.uniform(0.2, 0.3) * SIZE
            for _ in range(slices):
                cy, cx = centre + rng.normal(0, 1.0, 2)
                dist = np.hypot(yy - cy, xx - cx)
                r = radius * rng.uniform(0.85, 1.15)
                shape = dist < r if label == 0 else np.abs(dist - r) < 2.5
                image = 200 * shape + rng.normal(0, 20, (SIZE, SIZE))
                pixels.append(np.clip(image, 0, 255).astype(np.uint8))
                labels.append(label)
                patients.append(f"{prefix}{label}{p:03d}")
    files = [f"{p}_{i}.jpeg" for i, p in enumerate(patients)]
    return SliceSet(torch.from_numpy(np.stack(pixels)[:, None]), torch.tensor(labels), patients,
                    files, SIZE)


def noise_set(n=96, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, SIZE, SIZE), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def train_set():
    return toy_set(seed=0)


@pytest.fixture(scope="module")
def test_set():
    return toy_set(patients_per_class=6, seed=1, prefix="t")


@pytest.fixture(scope="module")
def cached(train_set, tmp_path_factory):
    """(judge, reused, folder) from a first judge_for call on an empty cache."""
    folder = tmp_path_factory.mktemp("judge")
    judge, reused = judge_mod.judge_for(train_set, CFG, folder, progress=False)
    return judge, reused, folder


def test_judge_learns_the_toy_classes(cached, test_set):
    judge, reused, _ = cached
    assert not reused
    assert judge.val_accuracy > 0.9
    assert judge.accuracy(test_set) > 0.9
    assert set(judge.predict(test_set.pixels).tolist()) == {0, 1}
    probs = judge.probabilities(test_set.pixels)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_noise_features_are_far_from_real_ones(cached, train_set, test_set):
    judge = cached[0]
    real_train, real_test = judge.features(train_set.pixels), judge.features(test_set.pixels)
    assert real_train.shape == (len(train_set), judge_mod.HIDDEN_SIZES[-1])
    noise = judge.features(noise_set())
    assert frechet_distance(real_test, noise) > 3 * frechet_distance(real_test, real_train)


def test_uint8_and_float_inputs_agree(cached, test_set):
    judge = cached[0]
    as_float = test_set.pixels.float() / 127.5 - 1.0
    np.testing.assert_allclose(judge.features(test_set.pixels), judge.features(as_float),
                               atol=1e-5)


def test_wrong_resolution_is_refused(cached):
    with pytest.raises(ValueError, match="32 px"):
        cached[0].features(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


@pytest.mark.kernels
def test_save_load_roundtrip_gives_identical_features(cached, test_set, tmp_path):
    judge = cached[0]
    judge.save(tmp_path)
    assert {"config.json", "model.safetensors", "judge.json"} <= {p.name for p in
                                                                 tmp_path.iterdir()}
    loaded = judge_mod.Judge.load(tmp_path)
    assert loaded.resolution == SIZE and loaded.val_accuracy == judge.val_accuracy
    weights, back = judge.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(weights[k], back[k]) for k in weights)  # the same numbers saved
    # the trained judge's weights are channels-last, the loaded ones not: another convolution
    # path, so the features agree to float tolerance (``tolerance``), not bit for bit
    assert_features_close(loaded.features(test_set.pixels), judge.features(test_set.pixels))


@pytest.mark.kernels
def test_cache_is_reused_for_the_same_data_and_settings(cached, train_set, test_set):
    judge, _, folder = cached
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again, reused = judge_mod.judge_for(train_set, CFG, folder, progress=False)
    assert reused and weights.stat().st_mtime_ns == before
    assert_features_close(again.features(test_set.pixels), judge.features(test_set.pixels))
    info = json.loads((folder / "judge.json").read_text())
    assert info["data_fingerprint"] == judge_mod.data_fingerprint(train_set)
    assert info["resolution"] == SIZE


def test_cache_is_invalidated_when_data_or_settings_change(train_set, tmp_path):
    cfg = EvalConfig(judge_steps=2, judge_batch_size=8)
    assert not judge_mod.judge_for(train_set, cfg, tmp_path, progress=False)[1]
    assert judge_mod.judge_for(train_set, cfg, tmp_path, progress=False)[1]
    changed = train_set.subset(range(len(train_set)))
    changed.pixels[0, 0, 0, 0] ^= 1  # one pixel, one bit
    assert judge_mod.data_fingerprint(changed) != judge_mod.data_fingerprint(train_set)
    assert not judge_mod.judge_for(changed, cfg, tmp_path, progress=False)[1]
    longer = EvalConfig(judge_steps=3, judge_batch_size=8)
    assert not judge_mod.judge_for(changed, longer, tmp_path, progress=False)[1]
    assert judge_mod.judge_for(changed, longer, tmp_path, progress=False)[1]
    (tmp_path / "model.safetensors").write_bytes(b"truncated")  # a damaged cache is retrained
    assert not judge_mod.judge_for(changed, longer, tmp_path, progress=False)[1]
    assert judge_mod.judge_for(changed, longer, tmp_path, progress=False)[1]


def test_training_is_deterministic_for_a_seed(train_set):
    settings = judge_mod.TrainSettings(steps=3, batch_size=8, learning_rate=1e-3, seed=4)
    a, _ = judge_mod.train_classifier(train_set.pixels, train_set.labels, settings, progress=False)
    b, acc = judge_mod.train_classifier(train_set.pixels, train_set.labels, settings,
                                        progress=False)
    assert acc is None  # no validation set, no accuracy
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_tstr_trains_on_one_set_and_tests_on_another(train_set, test_set):
    accuracy = judge_mod.tstr_accuracy(train_set.pixels, train_set.labels, test_set, CFG,
                                       progress=False)
    assert accuracy > 0.9
    # labels that carry no information give a classifier near chance on real data
    shuffled = train_set.labels[torch.randperm(len(train_set),
                                               generator=torch.Generator().manual_seed(0))]
    assert judge_mod.tstr_accuracy(train_set.pixels, shuffled, test_set, CFG,
                                   progress=False) < 0.75
