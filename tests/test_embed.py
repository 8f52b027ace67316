"""embed.py end to end on the tiny model, and the interpretation rules on synthetic features."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

import embed
from pipelines import embedding as emb
from pipelines.data import CLASS_NAMES

from .conftest import run_script, with_overrides

FILES = ("embedding.png", "embedding_levels.png", "embedding.csv", "embedding.json", "embedding.md")


@pytest.fixture(scope="module")
def tsne_run(tiny_model, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed_tsne")
    run_script("embed.py", "--model", tiny_model, "--data", tiny_data, "--out", out,
               "--method", "tsne", "--with_generated", "4")
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_numbers(record):
    """Every number the table reports, as the report formats it."""
    values = [record["chance"], *record["knn_accuracy"].values(), *record["silhouette"].values()]
    if "own_patient_nearest" in record:
        values += [*record["own_patient_nearest"].values(), record["own_patient_chance"]]
    if "generated_agreement" in record:
        values += [v for d in record["generated_agreement"].values() for v in d.values()]
        values += [*record["real_agreement"].values(), *record["agreement_chance"].values(),
                   record["real_agreement_chance"]]
    return [emb.fmt(v) for v in values]


def test_tsne_with_generated_writes_consistent_files(tsne_run, tiny_data):
    for name in FILES:
        assert (tsne_run / name).is_file() and (tsne_run / name).stat().st_size > 0
    record = json.loads((tsne_run / "embedding.json").read_text())
    n_test = sum(1 for p in (tiny_data / "test").rglob("*.jpeg"))
    assert (record["method"], record["space"], record["split"]) == ("tsne", "latent", "test")
    assert record["counts"]["real"]["total"] == n_test
    assert record["counts"]["generated"] == {"NC": 4, "AD": 4, "total": 8}
    assert record["k"] == min(10, n_test - 1)
    for where in ("feature", "map"):
        assert 0.0 <= record["knn_accuracy"][where] <= 1.0
        assert -1.0 <= record["silhouette"][where] <= 1.0
        assert 0.0 <= record["real_agreement"][where] <= 1.0
        assert set(record["generated_agreement"][where]) == {"NC", "AD", "overall"}
        assert all(0.0 <= v <= 1.0 for v in record["generated_agreement"][where].values())
    assert 0.5 <= record["chance"] <= 1.0
    assert record["sampling"]["num_inference_steps"] == 4  # tiny.yaml

    rows = read_csv(tsne_run / "embedding.csv")
    assert len(rows) == n_test + 8
    assert list(rows[0]) == ["x", "y", "label", "source", "file"]
    assert sum(r["source"] == "generated" for r in rows) == 8
    assert {r["label"] for r in rows} <= set(CLASS_NAMES)
    assert all((tiny_data / r["file"]).is_file() for r in rows if r["source"] == "real")
    assert all(np.isfinite([float(r["x"]), float(r["y"])]).all() for r in rows)

    md = (tsne_run / "embedding.md").read_text()
    assert "](embedding.png)" in md and "](embedding_levels.png)" in md
    for number in table_numbers(record):
        assert number in md
    for sentence in emb.interpret(record, "latent", "tsne"):
        assert sentence in md


def test_the_demo_report_shows_each_map_with_its_reading(tsne_run, tiny_data, tmp_path):
    from tools.demo import write_report

    shutil.copytree(tsne_run, tmp_path / "demo" / "embedding_judge")  # a judge map alone
    report = write_report(tiny_data, tmp_path / "demo").read_text()
    assert "](embedding_judge/embedding.png)" in report
    assert "](embedding/embedding.png)" not in report  # no latent map there: none shown
    record = json.loads((tsne_run / "embedding.json").read_text())
    for sentence in emb.interpret(record, "latent", "tsne"):
        assert sentence in report
    shutil.copytree(tsne_run, tmp_path / "demo" / "embedding")  # both: the latents' first
    report = write_report(tiny_data, tmp_path / "demo").read_text()
    assert report.index("](embedding/embedding.png)") < report.index("](embedding_judge/")


def test_umap_judge_space(tiny_model, tiny_data, tmp_path):
    run_script("embed.py", "--model", tiny_model, "--data", tiny_data, "--out", tmp_path,
               "--method", "umap", "--space", "judge", "--with_generated", "2", "--seed", "1")
    record = json.loads((tmp_path / "embedding.json").read_text())
    assert (record["method"], record["space"], record["seed"]) == ("umap", "judge", 1)
    assert record["feature_dim"] == 256  # the judge's feature width
    assert (tiny_model / "judge" / "judge.json").is_file()  # cached beside the model
    rows = read_csv(tmp_path / "embedding.csv")
    assert len(rows) == record["counts"]["real"]["total"] + 4
    assert "UMAP" in (tmp_path / "embedding.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--method", "pca"], "unknown --method"),
    (["--space", "pixels"], "unknown --space"),
    (["--with_generated", "-1"], "--with_generated"),
    (["--max_images", "0"], "--max_images"),
    (["--data", "/nonexistent/AD_NC"], "does not exist"),
])
def test_bad_input_exits_2(args, message, tiny_model, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        embed.main(with_overrides(["--model", str(tiny_model), "--data", str(tiny_data), "--out",
                                   str(tmp_path)], args))
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert last.startswith("error:") and message in last
    assert not (tmp_path / "embedding.json").exists()


def test_missing_model_exits_2_without_traceback(tiny_data, tmp_path):
    proc = run_script("embed.py", "--model", tmp_path / "nope", "--data", tiny_data, check=False)
    assert proc.returncode == 2
    assert "no model at" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- rules


def blobs(n_per_class=60, dims=16, distance=10.0, seed=0):
    """Two Gaussian classes ``distance`` apart along the first axis (unit noise)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    feats = rng.normal(size=(2 * n_per_class, dims))
    feats[:, 0] += labels * distance
    return feats, labels


def numbers_in(sentence):
    return re.findall(r"-?\d+\.\d{3}", sentence)


def check_sentences_use_summary(sentences, summary):
    """Every sentence states a number, and every number it states is one of the summary's."""
    allowed = set(table_numbers(summary))
    for sentence in sentences:
        found = numbers_in(sentence)
        assert found, sentence
        assert set(found) <= allowed, sentence


def test_rules_on_well_separated_features():
    real, labels = blobs(seed=0)
    gen, gen_labels = blobs(n_per_class=10, seed=1)
    summary = emb.summarise(real, labels, real[:, :2], gen, gen_labels, gen[:, :2])
    assert summary["knn_accuracy"]["feature"] == 1.0 and summary["chance"] == 0.5
    sentences = emb.interpret(summary, "latent", "umap")
    text = " ".join(sentences)
    assert "separate clearly" in sentences[0]
    assert "form distinct clusters" in sentences[1]
    assert "keeps the label structure" in sentences[2]
    assert "generated NC slices fall among real NC slices" in text
    assert "generated AD slices fall among real AD slices" in text
    check_sentences_use_summary(sentences, summary)


def test_rules_on_random_features():
    rng = np.random.default_rng(0)
    real, labels = rng.normal(size=(120, 16)), rng.permutation(np.repeat([0, 1], 60))
    gen, gen_labels = rng.normal(size=(20, 16)), np.repeat([0, 1], 10)
    summary = emb.summarise(real, labels, real[:, :2], gen, gen_labels, gen[:, :2])
    sentences = emb.interpret(summary, "judge", "tsne")
    assert "separate barely" in sentences[0]
    assert "do not form separate clusters" in sentences[1]
    assert all("fall among" not in s for s in sentences)
    assert "barely group by label" in sentences[3]  # real slices are no baseline here
    check_sentences_use_summary(sentences, summary)


def test_rules_flag_swapped_labels_and_an_unfaithful_map():
    real, labels = blobs(seed=0)
    gen, gen_labels = blobs(n_per_class=10, seed=1)
    noise_map = np.random.default_rng(2).normal(size=(len(real), 2))
    summary = emb.summarise(real, labels, noise_map, gen, 1 - gen_labels, gen[:, :2])
    sentences = emb.interpret(summary, "latent", "umap")
    assert "loses label structure" in sentences[2]
    assert "generated NC slices sit closer to real slices of the other class" in sentences[3]
    check_sentences_use_summary(sentences, summary)


def patients_of(n_patients=12, slices=10, seed=0):
    """Features of patients whose slices sit close together, labels by patient, no label signal."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5.0, (n_patients, 16))
    feats = np.repeat(centres, slices, axis=0) + rng.normal(0, 0.1, (n_patients * slices, 16))
    patients = np.repeat(np.arange(n_patients), slices)
    return feats, patients % 2, patients


def test_rules_see_a_space_organised_by_patient():
    real, labels, patients = patients_of(n_patients=40, slices=5)
    gen, gen_labels = real[::5], labels[::5]  # copies of one slice of each real patient
    summary = emb.summarise(real, labels, real[:, :2], gen, gen_labels, gen[:, :2], patients)
    assert summary["own_patient_nearest"]["feature"] == 1.0
    assert summary["own_patient_chance"] == pytest.approx(4 / 199)
    sentences = emb.interpret(summary, "latent", "umap")
    assert "organised by patient" in sentences[0]
    assert "each slice judged with its own patient left out" in sentences[1]
    # a copy is judged by the patients around the one it copies, as that patient's slices are:
    # labels drawn by patient carry nothing there, so sitting by a patient earns no credit
    assert all("fall among" not in s and "more typical" not in s for s in sentences)
    check_sentences_use_summary(sentences, summary)


def test_rules_say_nothing_of_patients_when_each_slice_is_its_own():
    real, labels = blobs(seed=0)
    summary = emb.summarise(real, labels, real[:, :2], real_groups=np.arange(len(real)))
    assert "own_patient_nearest" not in summary
    assert "separate clearly" in emb.interpret(summary, "latent", "umap")[0]


def test_rules_see_a_space_not_organised_by_patient():
    real, labels = blobs(seed=0)
    patients = np.random.default_rng(1).integers(0, 12, len(real))  # patients scattered
    summary = emb.summarise(real, labels, real[:, :2], real[:4], labels[:4], real[:4, :2],
                            patients)
    sentences = emb.interpret(summary, "latent", "umap")
    assert "does not group slices by patient" in sentences[0]
    assert "separate clearly" in sentences[1]
    check_sentences_use_summary(sentences, summary)


def test_rules_without_generated():
    real, labels = blobs(distance=1.5)  # overlapping classes: 10-NN accuracy about 0.68
    summary = emb.summarise(real, labels, real[:, :2])
    assert "generated_agreement" not in summary
    sentences = emb.interpret(summary, "latent", "umap")
    assert len(sentences) == 3
    assert "separate partly" in sentences[0]
    assert "do not form separate clusters" in sentences[1]
    check_sentences_use_summary(sentences, summary)


def test_reduce_features_standardises_then_caps_dimensions():
    feats, _ = blobs(n_per_class=60, dims=80)
    reduced = emb.reduce_features(feats)
    assert reduced.shape == (120, emb.PCA_DIMS)
    assert emb.reduce_features(feats[:40]).shape == (40, 40)  # PCA cannot exceed N
    few = emb.reduce_features(feats[:, :10])
    assert few.shape == (120, 10)
    np.testing.assert_allclose(few.std(0), 1.0, atol=1e-4)


def test_embed_2d_is_seeded():
    feats, _ = blobs(n_per_class=20, dims=80)
    xy = emb.embed_2d(feats, "tsne", seed=0)
    assert xy.shape == (40, 2) and np.isfinite(xy).all()
    np.testing.assert_allclose(xy, emb.embed_2d(feats, "tsne", seed=0))


@pytest.mark.parametrize("agree, verdict", [
    (0.609, "lean only slightly towards real NC slices"),  # the 07:57 demo's generated NC
    (0.52, "sit no closer to real NC slices than chance"),
    (0.40, "sit closer to real slices of the other class"),
    (0.75, "lean towards real NC slices, less than real slices do"),
])
def test_agreement_verdict_follows_the_gain_over_chance(agree, verdict):
    summary = {"k": 10, "real_agreement": {"feature": 0.8985},
               "generated_agreement": {"feature": {"NC": agree}},
               "agreement_chance": {"NC": 0.5}, "real_agreement_chance": 0.5}
    assert verdict in emb._agreement(summary, "feature", "NC")


def test_generated_slices_more_typical_than_real_ones_are_called_so():
    # the demo's judge space: real slices agree 0.627 with their own patient left out,
    # generated NC 0.893 (guidance draws class-typical slices)
    summary = {"k": 10, "real_agreement": {"feature": 0.627},
               "generated_agreement": {"feature": {"NC": 0.893}},
               "agreement_chance": {"NC": 0.5}, "real_agreement_chance": 0.474}
    assert "more consistently than real slices themselves do, more typical of their label" in \
        emb._agreement(summary, "feature", "NC")
    summary["generated_agreement"]["feature"]["NC"] = 0.64  # about as typical as real slices
    sentence = emb._agreement(summary, "feature", "NC")
    assert "fall among real NC slices" in sentence and "more typical" not in sentence


def test_the_real_slices_chance_leaves_their_patient_out():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # each slice's own patient holds 2 of its label: 2 of the 6 others share it
    assert emb.agreement_chance_left_out(labels, [0, 0, 1, 1, 2, 2, 3, 3]) == pytest.approx(2 / 6)
    assert emb.agreement_chance_left_out(labels) == pytest.approx(3 / 7)  # each slice alone
    summary = emb.summarise(*blobs(n_per_class=20, distance=0.0)[:1], np.repeat([0, 1], 20),
                            np.zeros((40, 2)), np.zeros((2, 16)), np.array([0, 1]),
                            np.zeros((2, 2)), np.repeat(np.arange(8), 5))
    assert summary["real_agreement_chance"] == pytest.approx(15 / 35)


def test_label_measures_are_not_defined_for_one_patient_or_one_label_and_say_why():
    real, labels, patients = patients_of(n_patients=6, slices=4)
    patients = np.where(labels == 1, 99, patients)  # every AD slice from one patient
    summary = emb.summarise(real, labels, real[:, :2], real[:2], labels[:2], real[:2, :2],
                            patients)
    assert "knn_accuracy" not in summary and "generated_agreement" not in summary
    assert "AD slices come from one patient" in summary["label_measures_not_defined"]
    sentences = emb.interpret(summary, "latent", "umap")
    assert "not defined here" in sentences[-1]
    assert "than chance" not in " ".join(sentences) and "0.000" not in " ".join(sentences)
    table = "\n".join(emb.markdown_table({**summary, "space": "latent"}))
    assert "| n/a | n/a |" in table and "0.000" not in table
    one_label = emb.summarise(real[labels == 0], labels[labels == 0], real[labels == 0, :2])
    assert "one label only (NC)" in one_label["label_measures_not_defined"]
