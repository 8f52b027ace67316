import json
import random
import time

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from pipelines.config import TrainConfig
from pipelines.training import (
    THROUGHPUT_WARMUP_STEPS,
    BatchSchedule,
    TrainingDiverged,
    batch_generator,
    checkpoints,
    cosine_lr,
    resolve_resume,
    rng_untouched,
    run_training,
)


def test_batch_schedule_is_a_pure_function_of_seed_and_step():
    a = BatchSchedule(10, 4, seed=1)
    b = BatchSchedule(10, 4, seed=1)
    assert [a.indices(s).tolist() for s in range(6)] == [b.indices(s).tolist() for s in range(6)]
    late = BatchSchedule(10, 4, seed=1)
    assert late.indices(5).tolist() == a.indices(5).tolist()  # resume mid-run: same batch
    epoch = torch.cat([a.indices(s) for s in range(5)])[:10]
    assert sorted(epoch.tolist()) == list(range(10))  # every example once per epoch
    r0, r1 = BatchSchedule(16, 4, 0, rank=0, world_size=2), BatchSchedule(16, 4, 0, 1, 2)
    assert not set(r0.indices(0).tolist()) & set(r1.indices(0).tolist())


def test_batch_generator_is_a_pure_function_of_seed_step_and_rank():
    def draw(*key):
        return torch.rand(4, generator=batch_generator(*key)).tolist()

    assert draw(0, 5, 1) == draw(0, 5, 1)
    assert len({tuple(draw(*key)) for key in [(0, 5, 1), (0, 5, 0), (0, 6, 1), (1, 5, 1)]}) == 4


def test_rng_untouched_restores_every_global_rng():
    def seed_all():
        torch.manual_seed(0), np.random.seed(0), random.seed(0)

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    seed_all()
    expected = draws()
    seed_all()
    with rng_untouched():
        draws()
    assert draws() == expected


def _run(tmp_path, loss_fn, steps=6, resume=None, **hooks):
    cfg = TrainConfig(max_train_steps=steps, train_batch_size=2, checkpointing_steps=2,
                      validation_steps=hooks.pop("validation_steps", 100), log_steps=1,
                      mixed_precision="no", lr_warmup_steps=1)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, sched = accelerator.prepare(model, optimizer, cosine_lr(optimizer, cfg))
    data = torch.randn(8, 3)

    def get_batch(indices, generator):  # randomness from the step's generator only
        return data[indices] + 0.1 * torch.randn(len(indices), 3, generator=generator)

    return run_training(accelerator=accelerator, model=model, optimizer=optimizer,
                        lr_scheduler=sched, loss_fn=loss_fn, get_batch=get_batch,
                        num_examples=8, cfg=cfg, output_dir=tmp_path, resume=resume, **hooks)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def loss_fn(model, batch, step):
        loss = model(batch).pow(2).mean()
        return (loss * float("nan") if step == 3 else loss), {}

    with pytest.raises(TrainingDiverged, match="nan at step 3"):
        _run(tmp_path, loss_fn)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2"]


def test_resume_continues_at_the_saved_step_and_ignores_half_written(tmp_path):
    def loss_fn(model, batch, step):
        return model(batch).pow(2).mean(), {}

    assert _run(tmp_path, loss_fn, steps=4).step == 4
    (tmp_path / "checkpoints" / "checkpoint-6.tmp").mkdir()  # a save killed half-way
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-4"
    assert _run(tmp_path, loss_fn, steps=6, resume="latest").step == 6
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert resolve_resume(tmp_path / "nothing", "latest") is None


class _Crash(Exception):
    pass


def _noisy_loss(crash_at=None):
    def loss_fn(model, batch, step):
        if step == crash_at:
            raise _Crash
        target = torch.randn(len(batch), 1)  # the global RNG, as the real objectives use it
        return (model(batch) - target).pow(2).mean(), {}
    return loss_fn


def _weights(tmp_path, step):
    from safetensors.torch import load_file

    return load_file(tmp_path / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


def _rng_eater(*_):
    """Validation/EMA-like work that draws from every global RNG."""
    torch.randn(100), np.random.rand(3), random.random()


def test_crashed_and_resumed_run_matches_the_uninterrupted_one(tmp_path):
    hooks = dict(save_extra=_rng_eater, load_extra=_rng_eater)
    _run(tmp_path / "straight", _noisy_loss(), **hooks)
    with pytest.raises(_Crash):  # dies in step 5, after checkpoint-4
        _run(tmp_path / "crashed", _noisy_loss(crash_at=4), **hooks)
    torch.manual_seed(123)  # whatever the process did since: the checkpoint restores the RNGs
    assert _run(tmp_path / "crashed", _noisy_loss(), resume="latest", **hooks).step == 6
    straight, resumed = _weights(tmp_path / "straight", 6), _weights(tmp_path / "crashed", 6)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(straight["weight"], _weights(tmp_path / "straight", 4)["weight"])


def test_validation_does_not_change_what_is_trained(tmp_path):
    _run(tmp_path / "quiet", _noisy_loss())
    _run(tmp_path / "validating", _noisy_loss(), validation_steps=1, on_validation=_rng_eater)
    quiet, validating = _weights(tmp_path / "quiet", 6), _weights(tmp_path / "validating", 6)
    assert all(torch.equal(quiet[k], validating[k]) for k in quiet)


def test_steady_speed_leaves_out_warm_up_validation_and_saves(tmp_path):
    def slow_validation(step):
        time.sleep(0.3)

    state = _run(tmp_path, _noisy_loss(), validation_steps=2, on_validation=slow_validation)
    speed = state.throughput
    assert speed["steady_steps"] == 6 - THROUGHPUT_WARMUP_STEPS
    assert speed["steady_seconds"] < 0.3  # three validations slept 0.9 s: none of it counted
    assert speed["steady_img_per_s"] == pytest.approx(3 * 2 / speed["steady_seconds"], rel=0.01)
    assert speed["peak_gpu_memory_gib"] is None  # CPU
    saved = json.loads((tmp_path / "checkpoints" / "checkpoint-6" / "trainer_state.json")
                       .read_text())
    assert saved == {"step": 6, "wall_seconds": saved["wall_seconds"], "images_seen": 12}
