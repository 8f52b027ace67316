import pytest
import torch
from accelerate import Accelerator

from pipelines.config import TrainConfig
from pipelines.training import (
    BatchSchedule,
    TrainingDiverged,
    checkpoints,
    cosine_lr,
    resolve_resume,
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


def _run(tmp_path, loss_fn, steps=6, resume=None):
    cfg = TrainConfig(max_train_steps=steps, train_batch_size=2, checkpointing_steps=2,
                      validation_steps=100, log_steps=1, mixed_precision="no", lr_warmup_steps=1)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, sched = accelerator.prepare(model, optimizer, cosine_lr(optimizer, cfg))
    data = torch.randn(8, 3)
    return run_training(accelerator=accelerator, model=model, optimizer=optimizer,
                        lr_scheduler=sched, loss_fn=loss_fn, get_batch=lambda i: data[i],
                        num_examples=8, cfg=cfg, output_dir=tmp_path, resume=resume)


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
