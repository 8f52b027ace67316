"""edit.py on the tiny model: every output at the native size, conversions reported."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.slices import NATIVE_SIZE

from .test_mistakes import run_main


def test_edit_writes_every_output_at_native_size(tiny_model, tiny_data, tmp_path, capsys):
    out = tmp_path / "edit"
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--num_images",
                         "3", "--num_inference_steps", "2", "--out", out, capsys=capsys)
    assert code == 0, err
    record = json.loads((out / "edit.json").read_text())
    assert record["summary"]["slices"] == 3 and record["to"] == "flip"
    for row in record["slices"]:
        assert row["target_label"] != row["source_label"]
        assert 0 <= row["p_target_before"] <= 1 and 0 <= row["p_target_after"] <= 1
        assert -1 <= row["ssim_to_source"] <= 1 and row["mean_abs_change_in_brain"] >= 0
        with Image.open(out / row["output"]) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == NATIVE_SIZE
        assert Path(row["output"]).stem == Path(row["file"]).stem  # named after its source
        assert (out / row["difference"]).is_file()
    assert (out / "panel.png").is_file()


def test_rgb_and_odd_sizes_are_converted_and_reported(tiny_model, tiny_data, tmp_path, capsys):
    nc = sorted((Path(tiny_data) / "test" / "NC").glob("*.jpeg"))[0]
    grey = np.asarray(Image.open(nc))
    rgb = tmp_path / "NC" / "rgb_1.png"
    rgb.parent.mkdir()
    Image.fromarray(np.stack([grey] * 3, -1)[:, 20:220]).save(rgb)  # RGB, 200x240
    deep = tmp_path / "deep_2.png"
    Image.fromarray(grey.astype(np.uint16) * 16).save(deep)  # 16-bit, no AD/NC folder
    out = tmp_path / "edit"
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--image", rgb,
                         "--to", "AD", "--num_inference_steps", "2", "--out", out,
                         capsys=capsys)
    assert code == 0, err
    record = json.loads((out / "edit.json").read_text())
    (note,) = record["converted"]
    assert "mode RGB" in note["reason"] and "size 200x240 padded" in note["reason"]
    assert Image.open(out / "rgb_1.png").size == NATIVE_SIZE
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--image", deep,
                         "--label", "nc", "--to", "AD", "--num_inference_steps", "2", "--out",
                         out, capsys=capsys)
    assert code == 0, err
    assert "scaled by its range" in json.loads((out / "edit.json").read_text())["converted"][0][
        "reason"]


def test_evaluate_scores_edits_and_baselines_against_the_paired_truth(tiny_model, tiny_data,
                                                                      tmp_path, capsys):
    import shutil

    from tools.phantom import write_phantom

    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    write_phantom(data, train_patients=3, test_patients=2, slices=4, seed=0, workers=1,
                  counterfactuals=1)  # the set is complete: only the pairs are written
    out = tmp_path / "truth"
    code, err = run_main("edit.py", "--model", tiny_model, "--data", data, "--evaluate",
                         "--num_inference_steps", "2", "--out", out, capsys=capsys)
    assert code == 0, err
    record = json.loads((out / "truth.json").read_text())
    assert sorted(record["directions"]) == ["AD->NC", "NC->AD"]
    for block in record["directions"].values():
        assert block["slices"] == 4
        rows = block["rows"]
        assert {"edit (posterior)", "baseline: inversion", "baseline: sdedit",
                "baseline: + mean AD-NC image", "source", "VAE reconstruction", "truth",
                "truth at the edit's size", "null edit (target = source label)"} == set(rows)
        assert rows["truth"]["mae_to_truth"] == 0 and rows["source"]["identity_ssim"] == 1
        faint = rows["truth at the edit's size"]  # between the source and the truth
        assert rows["truth"]["mae_to_truth"] <= faint["mae_to_truth"] <= \
            rows["source"]["mae_to_truth"]
        assert rows["null edit (target = source label)"]["mean_abs_change_in_brain"] == 0
        by_patient = block["edit_closer_by_patient"]  # one pair patient per class here
        assert len(by_patient) == 1 and list(by_patient.values()) == pytest.approx(
            [rows["edit (posterior)"]["closer_than_source"]], abs=1e-3)
        # one patient: another draw of patients is this one again, the interval is the value
        edit, spread = rows["edit (posterior)"], block["edit_intervals"]
        values = {"flip_rate": edit["flip_rate"], "closer_than_source": edit["closer_than_source"],
                  "mae_below_source": rows["source"]["mae_to_truth"] - edit["mae_to_truth"]}
        assert set(spread) == set(values)
        for key, (low, high) in spread.items():
            assert low == pytest.approx(high) == pytest.approx(values[key], abs=1e-3)
    assert (out / "truth.md").is_file() and (out / "truth_panel.png").is_file()
    # the default method's settings, its baselines at theirs (pipelines.counterfactual)
    assert record["model"] == str(tiny_model) and record["method"] == "posterior"
    assert (record["strength"], record["guidance_scale"], record["num_draws"]) == (0.75, 1.0, 16)
    assert record["baselines"] == {"inversion": {"strength": 0.4, "guidance_scale": 2.0},
                                   "sdedit": {"strength": 0.4, "guidance_scale": 2.0}}
    assert "Baselines: inversion, strength 0.4" in (out / "truth.md").read_text()
    assert record["truth_rule"] == "rank" and "by the rank rule" in (out / "truth.md").read_text()
    code, err = run_main("edit.py", "--model", tiny_model, "--data", data, "--evaluate",
                         "--num_images", "2", "--num_inference_steps", "2", "--out",
                         tmp_path / "two", capsys=capsys)
    assert code == 0, err
    two = json.loads((tmp_path / "two" / "truth.json").read_text())
    assert [b["slices"] for b in two["directions"].values()] == [2, 2]

    from tools.demo import counterfactual_targets, write_report

    for block in record["directions"].values():  # the field's measures
        a = block["axioms"]
        assert a["composition"]["drift"]["1"] == 0 == a["composition"]["drift"]["5"]  # exact
        assert a["reversibility"]["one_way"] > 0 and a["reversibility"]["round_trip"] >= 0
        low, high = a["share_explained_interval"]  # one patient: the interval is the value
        assert low == pytest.approx(high) == pytest.approx(a["share_explained"], abs=1e-3)
        assert a["flip"]["edit"] == block["rows"]["edit (posterior)"]["flip_rate"]
        assert "one-way change / distance back" in (out / "truth.md").read_text()
        assert a["csf_area"]["correlation"] is None  # one patient: not defined, and says why
    rows = counterfactual_targets(record)  # the demo report's verdicts, 9 per direction
    assert len(rows) == 2 + 2 * 9
    assert all(r.endswith(("| met |", "| MISSED |", "| n/a |")) for r in rows[2:])
    assert "(the truth itself; the truth at the edit's size)" in rows[2]
    assert "95 % over patients" in rows[3] and "95 % over patients" in rows[9]
    assert "95 % intervals over another draw of these 1 patients" in \
        (out / "truth.md").read_text()
    shutil.copytree(out, tmp_path / "demo" / "counterfactual")
    report = write_report(data, tmp_path / "demo").read_text()
    assert "## Counterfactuals against the truth" in report and "NC->AD flip rate" in report
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--evaluate",
                         "--out", tmp_path / "none", capsys=capsys)
    assert code == 2 and "--counterfactuals" in err


def test_edit_with_a_level_model_reads_levels_beside_the_file(tiny_level_model, tiny_data,
                                                             tmp_path, capsys):
    """--data and --image in an AD_NC folder: levels from the patient's slice numbers; a lone
    file: exit 2 naming --slice_position, which then makes it work."""
    from pipelines.counterfactual import level_beside, sources_from_data

    folder = Path(tiny_data) / "test" / "NC"
    files = sorted(folder.glob("*.jpeg"))
    sources = sources_from_data(tiny_data, "test", 4)
    assert all(s.position is not None and 0 <= s.position <= 1 for s in sources)
    for s in sources:  # the same level from the split's listing and from the folder beside it
        assert abs(level_beside(s.path) - s.position) < 1e-9
    out = tmp_path / "edit"
    code, err = run_main("edit.py", "--model", tiny_level_model, "--data", tiny_data,
                         "--image", files[0], "--num_inference_steps", "2", "--out", out,
                         capsys=capsys)
    assert code == 0, err
    lone = tmp_path / "NC" / files[0].name
    lone.parent.mkdir()
    lone.write_bytes(files[0].read_bytes())
    args = ["edit.py", "--model", tiny_level_model, "--data", tiny_data, "--image", lone,
            "--num_inference_steps", "2", "--out", out]
    code, err = run_main(*args, capsys=capsys)
    assert code == 2 and "--slice_position" in err and lone.name in err
    code, err = run_main(*args, "--slice_position", "0.3", capsys=capsys)
    assert code == 0, err
    code, err = run_main(*args, "--slice_position", "1.3", capsys=capsys)
    assert code == 2 and "--slice_position" in err


def test_edit_slice_position_on_a_label_only_model_exits_2(tiny_model, tiny_data, tmp_path,
                                                           capsys):
    nc = sorted((Path(tiny_data) / "test" / "NC").glob("*.jpeg"))[0]
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--image", nc,
                         "--slice_position", "0.3", "--out", tmp_path / "e", capsys=capsys)
    assert code == 2 and "label-only" in err


def test_the_truth_at_the_edit_s_size_scales_the_true_change():
    """The reference row for the flip rate: the true change times the edit's least-squares size
    along it, per slice, inside the brain; the truth for an exact edit, the source for none or
    one that points away from the truth."""
    from pipelines.counterfactual_eval import truth_at_size

    rng = np.random.default_rng(0)
    src = rng.integers(60, 140, (3, 12, 10)).astype(np.uint8)
    truth = src.copy()
    truth[:, 4:8, 3:7] += 40
    brain = np.ones(src.shape, bool)
    half = (src + (truth.astype(float) - src) * 0.5).astype(np.uint8)
    away = (src.astype(float) - (truth.astype(float) - src)).astype(np.uint8)
    edits = np.stack([truth[0], half[1], away[2]])
    out = truth_at_size(src, truth, edits, brain)
    assert np.array_equal(out[0], truth[0]) and np.array_equal(out[2], src[2])
    assert np.abs(out[1].astype(float) - half[1]).max() <= 1
    noise = src.astype(float) + rng.normal(0, 10, src.shape)  # uncorrelated: about no size
    scaled = truth_at_size(src, truth, np.clip(noise, 0, 255).astype(np.uint8), brain)
    true_size = np.abs(truth.astype(float) - src).mean()
    assert np.abs(scaled.astype(float) - src).mean() < 0.2 * true_size
    outside = brain.copy()
    outside[:, 4:8, 3:7] = False  # no true change inside the brain: nothing to scale
    assert np.array_equal(truth_at_size(src, truth, edits, outside), src)


def test_baselines_are_the_other_methods_at_comparable_settings():
    """Inversion and SDEdit are compared like for like (same strength and guidance); the
    posterior method and they are each scored at their own measured defaults."""
    from pipelines.counterfactual_eval import baseline_settings

    assert baseline_settings("inversion", 0.3, 3.0) == {"posterior": (0.75, 1.0),
                                                         "sdedit": (0.3, 3.0)}
    assert baseline_settings("posterior", 0.5, 1.5) == {"inversion": (0.4, 2.0),
                                                         "sdedit": (0.4, 2.0)}


def test_patient_interval_resamples_patients_not_slices():
    """The interval is as wide as the patients differ: none when every patient scores alike,
    wide when the score is set patient by patient, and the same on every call."""
    from types import SimpleNamespace

    from pipelines.counterfactual_eval import patient_interval

    sources = [SimpleNamespace(path=Path(f"{pid}_{i}.jpeg")) for pid in range(10, 20)
               for i in range(20)]
    alike = np.tile([0.0, 1.0], 100)  # every patient closer in half its slices
    assert patient_interval(alike, sources) == [0.5, 0.5]
    by_patient = np.repeat([1.0] * 7 + [0.0] * 3, 20)  # 7 of 10 patients closer in every slice
    low, high = patient_interval(by_patient, sources)
    assert low < 0.5 and high > 0.9  # ten patients say little more than "about 0.7"
    assert patient_interval(by_patient, sources) == [low, high]
    with_gap = by_patient.copy()
    with_gap[0] = np.nan  # a slice without brain has no error: left out, not counted as 0
    assert np.allclose(patient_interval(with_gap, sources), [low, high], atol=0.01)
