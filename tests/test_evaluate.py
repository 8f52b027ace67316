import json

import pytest

from .conftest import run_script, with_overrides

KEYS = {"fd", "precision", "recall", "judge_acc", "diversity", "memorisation", "tstr", "trtr",
        "inception_fid", "per_label", "sharpness", "sampling", "levels"}


@pytest.fixture(scope="module")
def evaluation(tiny_model, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    proc = run_script("evaluate.py", "--model", tiny_model, "--data", tiny_data, "--out", out,
                      "--num_images", "4", "--num_inference_steps", "2")
    return out, proc


def test_metrics_json_has_the_documented_shape(evaluation):
    out, proc = evaluation
    m = json.loads((out / "metrics.json").read_text())
    assert KEYS <= set(m)
    assert set(m["fd"]) == {"gen_vs_test", "train_vs_test"} and m["fd"]["gen_vs_test"] >= 0
    assert {"real_test", "gen_AD", "gen_NC"} <= set(m["judge_acc"])
    assert m["diversity"]["measure"] == "ssim"  # 32 px is too small for MS-SSIM
    assert {"gen_nn_ssim_median", "test_nn_ssim_median"} <= set(m["memorisation"])
    assert set(m["per_label"]) == {"AD", "NC"}
    assert set(m["per_label"]["AD"]["judge_acc"]) == {"real_test", "gen_AD"}
    assert 0 <= m["tstr"] <= 1 and 0 <= m["trtr"] <= 1 and m["inception_fid"] is None
    assert set(m["sharpness"]) == {"all", "AD", "NC", "vae_reconstruction"}
    ratios = m["sharpness"]["all"]["band_energy_ratio"]
    assert list(ratios) == ["(1/16, 1/8]", "(1/8, 1/4]", "(1/4, 1/2]", "(1/2, 1]"]
    assert all(v > 0 for v in ratios.values())
    # a 32 px model has no detail above 1/8 of the native Nyquist: the measure must say so
    assert ratios["(1/2, 1]"] < 0.2 and m["sharpness"]["all"]["log_spectrum_distance"] > 0
    for name in ("metrics.md", "closest_pairs.png", "generated_AD.png", "generated_NC.png",
                 "spectrum.png"):
        assert (out / name).is_file()
    assert "Frechet distance" in proc.stdout and "log-spectrum distance" in proc.stdout
    levels = m["levels"]  # a label-only model: levels predicted, none requested
    assert levels["generated_error"] is None and 0 <= levels["real_test_error"] <= 1
    assert set(levels["terciles"]) <= {"lowest third", "middle third", "highest third"}
    assert "level third" in proc.stdout


def test_level_model_is_measured_at_its_requested_levels(tiny_level_model, tiny_data, tmp_path):
    proc = run_script("evaluate.py", "--model", tiny_level_model, "--data", tiny_data, "--out",
                      tmp_path, "--num_images", "4", "--num_inference_steps", "2")
    levels = json.loads((tmp_path / "metrics.json").read_text())["levels"]
    assert 0 <= levels["generated_error"] <= 1 and levels["generated_to_real_error"] >= 0
    for third in levels["terciles"].values():
        assert 0 <= third["recall"] <= 1 and 0 <= third["real_reference_recall"] <= 1
    assert "at their requested levels" in proc.stdout


def test_judge_is_cached_and_reused(evaluation, tiny_model, tiny_data, tmp_path):
    run_script("evaluate.py", "--model", tiny_model, "--data", tiny_data, "--out", tmp_path,
               "--num_images", "2", "--num_inference_steps", "1")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["judge"]["reused_from_cache"] is True


@pytest.mark.parametrize("args, message", [
    (["--num_images", "0"], "positive"),
    (["--guidance_scale", "0"], ">= 1"),
    (["--model", "/no/model"], "no model at"),
    (["--data", "/no/data"], "does not exist"),
])
def test_evaluate_bad_input_exits_2(tiny_model, tiny_data, tmp_path, args, message):
    proc = run_script("evaluate.py", *with_overrides(
        ["--model", tiny_model, "--data", tiny_data, "--out", tmp_path], args), check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_test_label_with_one_patient_reports_precision_and_recall_as_not_defined(
        tiny_model, tmp_path):
    """One test patient per class: a real slice's radius, its own patient left out, has no
    other patient of its label to reach, so the per-label precision and recall say so."""
    from tools.phantom import write_phantom

    data = tmp_path / "AD_NC"
    write_phantom(data, train_patients=3, test_patients=1, slices=4, seed=0, workers=1)
    out = tmp_path / "eval"
    run_script("evaluate.py", "--model", tiny_model, "--data", data, "--out", out,
               "--num_images", "4", "--num_inference_steps", "2")
    m = json.loads((out / "metrics.json").read_text())
    assert m["precision"] is not None and m["recall"] is not None  # two patients overall
    for block in m["per_label"].values():
        assert block["precision"] is None and block["recall"] is None
        assert "from one patient" in block["precision_recall_not_defined"]
    assert "Precision and recall (AD): not defined here" in (out / "metrics.md").read_text()
