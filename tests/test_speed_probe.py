"""The demo's speed check: real training steps timed, each stage projected against its cap."""

import json
import math

import pytest

from pipelines import speed_probe
from pipelines.config import load_config

from .conftest import TINY


@pytest.fixture(scope="module")
def cfg():
    return load_config(TINY, ["--vae.max_train_steps", "100", "--vae.max_train_minutes", "1",
                              "--unet.max_train_steps", "100", "--unet.max_train_minutes", "0"])


@pytest.mark.parametrize("stage", speed_probe.STAGES)
def test_real_training_steps_are_timed(cfg, stage):
    per_step = speed_probe.time_training_steps(cfg, stage, seconds=0.2, max_steps=3, warmup=1)
    assert math.isfinite(per_step) and 0 < per_step < 60


def test_a_budget_past_its_cap_is_cut_and_said(cfg):
    # the VAE: 100 steps of 1 s = 100 s past its 60 s cap; the UNet has no cap
    vae, unet = speed_probe.project(cfg, {"vae": 1.0, "unet": 1.0})
    fixed = speed_probe.FIXED_STEPS["vae"]  # start-up and the final measurement, in steps
    assert vae.cut and vae.steps_reached == 60 and vae.full_seconds == pytest.approx(100 + fixed)
    assert vae.seconds == pytest.approx(60 + fixed)
    assert not unet.cut and unet.steps_reached == 100 and unet.seconds == unet.full_seconds
    warning = "\n".join(speed_probe.warning_lines([vae, unet], "--no_time_caps", "a smaller one"))
    assert "VAE would stop at step ~60 of 100" in warning and "UNet" not in warning
    assert "--no_time_caps" in warning and "a smaller one" in warning
    assert f"~{(100 + fixed) / 60:.1f} min" in warning  # the whole budget
    summary = speed_probe.summary_lines([vae, unet])
    assert "1000 ms/step" in summary[0] and "near step 60" in summary[0]
    assert "all steps" in summary[1] and "no cap" in summary[1]
    json.dumps(speed_probe.as_record([vae, unet]))  # what the demo writes


def test_a_budget_within_its_cap_or_without_caps_says_nothing(cfg):
    fits = speed_probe.project(cfg, {"vae": 0.1, "unet": 0.1})
    assert not any(p.cut for p in fits) and speed_probe.warning_lines(fits, "-", "-") == []
    lifted = speed_probe.project(cfg, {"vae": 1.0, "unet": 1.0}, caps=False)
    assert [p.steps_reached for p in lifted] == [100, 100]
    assert speed_probe.warning_lines(lifted, "-", "-") == []
    assert speed_probe.rest_seconds(lifted) == pytest.approx(speed_probe.REST_UNET_STEPS)


def test_the_demo_warns_early_records_it_and_lifts_the_caps_on_request(tmp_path, capsys):
    from tools import demo

    slow = tmp_path / "slow.yaml"  # budgets no host trains within a second
    slow.write_text(TINY.read_text().replace("max_train_steps: 6", "max_train_steps: 100000")
                    + "\n")
    cfg_text = slow.read_text()
    assert cfg_text.count("max_train_steps: 100000") == 3
    slow.write_text(cfg_text.replace("vae:\n", "vae:\n  max_train_minutes: 0.01\n", 1)
                    .replace("unet:\n", "unet:\n  max_train_minutes: 0.01\n", 1))
    out = tmp_path / "demo"
    record = demo.speed_check(str(slow), out, caps=True, seconds=0.2)
    err = capsys.readouterr().err
    assert "WARNING" in err and demo.LIFT_FLAG in err and "VAE would stop" in err
    assert json.loads((out / "speed_check.json").read_text())["warning"] == record["warning"]
    section = "\n".join(demo.host_speed_section(record, {}, {}, {}))
    assert "## Host speed" in section and "WARNING" in section
    lifted = demo.stages(str(slow), tmp_path / "data", out, caps=False)
    for name, cmd in lifted:
        assert ("--max_train_minutes" in cmd) == (name in ("train VAE", "train UNet")), name
    assert all("--max_train_minutes" not in cmd for _, cmd in demo.stages(str(slow),
                                                                        tmp_path, out))
