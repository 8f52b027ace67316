"""The app's handlers without a browser: same images as sample.py, every bad input a message,
uploads converted as the data layer converts them, and two clients at once each get their own."""

from __future__ import annotations

import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.app import (
    MAX_IMAGES,
    AppError,
    AppSession,
    edit_slice,
    generate_images,
    model_text,
    read_slice,
    read_upload,
    shown_in_page,
)
from pipelines.errors import UserError
from pipelines.sampling import sample_to_folder

from .tolerance import FEW_STEPS, assert_grey_levels_close


@pytest.fixture(scope="module")
def session(tiny_model, tiny_data):
    return AppSession(tiny_model, tiny_data)


@pytest.mark.kernels
def test_generate_gives_the_images_sample_py_writes(session, tiny_model, tmp_path):
    items, text, archive = generate_images(session, "both", 2, 2.0, 3, "ddim", 11)
    assert [caption for _, caption in items] == ["NC 0", "NC 1", "AD 0", "AD 1"]
    assert "2 NC, 2 AD" in text and "seed 11" in text and "3 steps" in text
    # sample.py's default batch (the model's), which the app uses too: each image has its own
    # noise, but a batch of 1 rounds differently from a batch of 2 on some CPUs (an AVX2-only one)
    sample_to_folder(tiny_model, ["NC", "AD"], tmp_path / "cli", num_images=2, seed=11,
                     batch_size=session.cfg.sample.batch_size, scheduler="ddim",
                     num_inference_steps=3, guidance_scale=2.0)
    with zipfile.ZipFile(archive) as zf:
        for label in ("NC", "AD"):
            for i in range(2):
                name = f"{label}/{label}_{i:04d}.png"
                assert zf.read(name) == (tmp_path / "cli" / name).read_bytes(), name
        assert "sample.json" in zf.namelist()
    for path, _ in items:
        assert Image.open(path).size == (256, 240)


@pytest.mark.parametrize("args, words", [
    (("AD", 0, 2.0, 3, "ddim", 1), ["Images per label", "from 1 to"]),
    (("AD", MAX_IMAGES + 1, 2.0, 3, "ddim", 1), ["Images per label", str(MAX_IMAGES + 1)]),
    (("AD", 2.5, 2.0, 3, "ddim", 1), ["Images per label", "whole number"]),
    (("AD", None, 2.0, 3, "ddim", 1), ["Images per label is empty"]),
    (("AD", 2, 2.0, 3, "ddim", -1), ["Seed", "-1"]),
    (("AD", 2, 0.5, 3, "ddim", 1), ["Guidance scale", "1 or more"]),
    (("AD", 2, float("nan"), 3, "ddim", 1), ["Guidance scale"]),
    (("AD", 2, 2.0, 0, "ddim", 1), ["Steps", "from 1 to"]),
    (("AD", 2, 2.0, 3, "nope", 1), ["unknown scheduler 'nope'"]),
    (("MCI", 2, 2.0, 3, "ddim", 1), ["unknown label 'MCI'"]),
])
def test_bad_generate_input_is_a_message(session, args, words):
    with pytest.raises((AppError, UserError)) as err:
        generate_images(session, *args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_page_messages_never_carry_a_traceback(session):
    import gradio as gr

    with pytest.raises(gr.Error) as err:
        shown_in_page(generate_images)(session, "AD", 0, 2.0, 3, "ddim", 1)
    assert "Images per label" in err.value.message

    def broken():
        raise KeyError("a bug")

    with pytest.raises(gr.Error) as err:
        shown_in_page(broken)()
    assert "unexpected KeyError" in err.value.message and "full trace in" in err.value.message


def _save(path, array, mode=None):
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_uploads_convert_like_the_data_layer_or_are_refused(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (240, 256), dtype=np.uint8)
    pixels, note = read_upload(_save(tmp_path / "grey.png", grey))
    assert note is None and np.array_equal(pixels, grey)
    _, note = read_upload(_save(tmp_path / "rgb.png", np.stack([grey] * 3, -1)))
    assert "converted to greyscale" in note
    _, note = read_upload(_save(tmp_path / "deep.png", grey.astype(np.uint16) * 200))
    assert "scaled by its range" in note
    _, note = read_upload(_save(tmp_path / "small.png", grey[:100, :120]))
    assert "size 120x100 padded" in note
    refusals = {
        "text.png": (lambda p: p.write_text("hello"), r"not a readable image \(unknown format\)"),
        "huge.png": (lambda p: _save(p, np.zeros((3000, 3000), np.uint8)), "too large"),
        "heavy.png": (lambda p: p.write_bytes(b"\0" * (6 * 2**20)), "larger than 5 MB"),
    }
    for name, (write, words) in refusals.items():
        write(tmp_path / name)
        with pytest.raises(AppError, match=words):
            read_upload(tmp_path / name)


def test_reading_a_test_slice(session):
    picked = session.test_slices()[0]
    image, notes, probs = read_slice(session, picked, None)
    assert image.shape == (240, 256) and image.dtype == np.uint8
    assert f"true label **{picked.split('/')[1]}**" in notes
    assert set(probs) == {"NC", "AD"} and abs(sum(probs.values()) - 1) < 1e-5
    with pytest.raises(AppError, match="pick a test slice or upload one"):
        read_slice(session, None, None)


def test_model_tab_shows_the_card_and_training(session):
    text, config = model_text(session)
    assert "# ADNI AD/NC class-conditioned latent diffusion" in text
    assert "## Training" in text and "| steps |" in text
    assert "Not evaluated yet" in text
    assert '"unet": {' in config and '"unet": {' not in text  # folded away, not lost


@pytest.mark.kernels
def test_two_clients_at_once_each_get_their_own_images(tiny_model, tiny_data):
    from gradio_client import Client

    from tools.browser import app_server

    expected, alone = {}, AppSession(tiny_model, None)  # its files live as long as it does
    for seed in (1, 2):
        items, _, _ = generate_images(alone, "AD", 2, 2.0, 3, "ddim", seed)
        expected[seed] = [np.asarray(Image.open(p)) for p, _ in items]
    got, errors = {}, []
    folders = set(Path(tempfile.gettempdir()).glob("adni-app-*"))
    with app_server(tiny_model, tiny_data) as (url, _):
        def ask(seed):
            try:
                result = Client(url, verbose=False).predict("AD", 2, 2.0, 3, "ddim", seed, "",
                                                             api_name="/generate")
                got[seed] = [np.asarray(Image.open(item["image"])) for item in result[0]]
            except Exception as err:  # reported below, not lost in the thread
                errors.append(err)

        threads = [threading.Thread(target=ask, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert not errors, errors
    # the server, stopped by SIGTERM, removed its session's folder on the way out
    assert set(Path(tempfile.gettempdir()).glob("adni-app-*")) <= folders
    for seed in (1, 2):
        assert len(got[seed]) == 2
        # the server's process and worker threads, not this one's: the same draws, pixels
        # equal up to rounding carried through the sampler's few steps (``tolerance``)
        for a, b in zip(got[seed], expected[seed], strict=True):
            assert_grey_levels_close(a, b, FEW_STEPS)
    assert not np.array_equal(got[1][0], got[2][0])


def test_the_demo_layout_is_found_only_for_its_own_model(tiny_model, tmp_path):
    import json
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "run" / "model",
                            ignore=shutil.ignore_patterns("checkpoints", "latent_cache", "logs"))
    evaluation = tmp_path / "run" / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.md").write_text("| FD | 1.0 |")
    (evaluation / "metrics.json").write_text(json.dumps({"model": str(tmp_path / "other")}))
    session = AppSession(model)
    assert "Not evaluated yet" in model_text(session)[0]  # a sibling of another model
    (evaluation / "metrics.json").write_text(json.dumps({"model": str(model)}))
    assert f"## Evaluation (`{evaluation}`)" in model_text(session)[0]


def test_a_stylegan2_folder_generates_without_sampler_fields(tiny_gan):
    session = AppSession(tiny_gan)
    assert session.saved == {}  # the page hides guidance, steps and sampler
    items, text, _ = generate_images(session, "NC", 2, None, None, None, 3)
    assert len(items) == 2 and "sampler" not in text


@pytest.mark.parametrize("args, words", [
    (["--model", "/no/such/model"], ["no model at /no/such/model", "make demo"]),
    (["--port", "0"], ["--port must be from 1 to 65535"]),
    (["--data", "/no/such/AD_NC"], ["--data /no/such/AD_NC is not a folder"]),
])
def test_app_mistakes_exit_2_with_one_message(tiny_model, args, words, capsys):
    from .test_mistakes import run_main

    full = ["--model", str(tiny_model), *args] if args[0] != "--model" else args
    code, err = run_main("app.py", *full, capsys=capsys)
    assert code == 2 and "Traceback" not in err
    assert all(w in err for w in words), err


def test_a_level_model_generates_at_the_requested_level(tiny_level_model, tiny_data, session,
                                                        tmp_path):
    """The slice level field: the images sample.py writes at that level; a bad level, or a
    level for a label-only model, is a message."""
    level_session = AppSession(tiny_level_model, tiny_data)
    items, text, archive = generate_images(level_session, "AD", 2, 2.0, 3, "ddim", 5, "0.8")
    assert "slice level 0.8" in text
    sample_to_folder(tiny_level_model, ["AD"], tmp_path / "cli", num_images=2, seed=5,
                     batch_size=level_session.cfg.sample.batch_size, scheduler="ddim",
                     num_inference_steps=3, guidance_scale=2.0, positions=[0.8])
    with zipfile.ZipFile(archive) as zf:
        cli = tmp_path / "cli" / "AD" / "AD_pos0.800_0001.png"
        assert zf.read("AD/AD_0001.png") == cli.read_bytes()
    _, text, _ = generate_images(level_session, "AD", 1, 2.0, 3, "ddim", 5, "")
    assert "slice level random" in text
    for bad in ("1.5", "-0.1", "low", "nan"):
        with pytest.raises(AppError, match="Slice level must be a number from 0"):
            generate_images(level_session, "AD", 1, 2.0, 3, "ddim", 5, bad)
    with pytest.raises(AppError, match="label-only"):
        generate_images(session, "AD", 1, 2.0, 3, "ddim", 5, "0.5")


@pytest.mark.kernels
def test_editing_a_slice_writes_what_edit_py_writes(session, tiny_model, tiny_level_model,
                                                   tiny_data, tmp_path, capsys):
    """The Edit button: edit.py's outputs for the same slice and settings; bad fields are
    messages; an upload needs its label (and, for a level model, its level)."""
    from pipelines.counterfactual import DEFAULT_GUIDANCE, DEFAULT_METHOD, DEFAULT_STRENGTH

    from .test_mistakes import run_main

    picked = session.test_slices()[0]  # the page's defaults are edit.py's
    image, difference, notes, record = edit_slice(session, picked, None, None, "the other label",
                                                  DEFAULT_STRENGTH, DEFAULT_METHOD,
                                                  DEFAULT_GUIDANCE, "")
    label = picked.split("/")[1]
    other = "AD" if label == "NC" else "NC"
    assert f"**{label} -> {other}**" in notes and "Not scored against the truth" in notes
    assert Image.open(image).size == (256, 240) and Image.open(difference).format == "PNG"
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--image",
                         tiny_data / picked, "--to", other, "--batch_size", "1", "--out",
                         tmp_path / "cli", capsys=capsys)
    assert code == 0, err
    assert Image.open(image).tobytes() == \
        Image.open(tmp_path / "cli" / Path(picked).with_suffix(".png").name).tobytes()
    upload = tmp_path / "slice.png"
    Image.open(tiny_data / picked).save(upload)
    fields = {"picked": picked, "uploaded": None, "source_label": None, "target": "AD",
              "strength": 0.4, "method": "inversion", "guidance_value": 2.0, "level_value": ""}
    bad = [({"picked": None}, "pick a test slice or upload one"),
           ({"picked": None, "uploaded": str(upload)}, "Source label: choose AD or NC"),
           ({"target": "MCI"}, "Edit to: choose one of"),
           ({"strength": 0}, "Strength must be a number in"),
           ({"strength": "x"}, "Strength must be a number in .* got 'x'"),
           ({"method": "blend"}, "Method: choose"),
           ({"guidance_value": 0.5}, "Guidance scale"),
           ({"level_value": "0.5"}, "label-only")]
    for change, words in bad:
        with pytest.raises(AppError, match=words):
            edit_slice(session, **{**fields, **change})
    level_session = AppSession(tiny_level_model, tiny_data)
    with pytest.raises(AppError, match="Slice level: this model reads each slice's level"):
        edit_slice(level_session, None, str(upload), "NC", "AD", 0.4, "inversion", 2.0, "")
    _, _, notes, _ = edit_slice(level_session, None, str(upload), "NC", "AD", 0.4, "inversion",
                                2.0, "0.3")
    assert "slice level 0.30" in notes


def test_the_edit_notes_say_how_the_model_scored_against_the_truth(tiny_model, tmp_path):
    """A model scored by edit.py --evaluate (MODEL/edit_truth) gets its numbers beside each edit,
    an AUC that could not be computed (null) as n/a."""
    import json
    import shutil

    from pipelines.app import truth_summary

    model = shutil.copytree(tiny_model, tmp_path / "model")
    edit = {"flip_rate": 0.75, "closer_than_source": 0.5, "localisation_auc": None}
    record = {"method": "inversion", "strength": 0.4,
              "directions": {"NC->AD": {"rows": {"edit (inversion)": edit}}}}
    (model / "edit_truth").mkdir()
    (model / "edit_truth" / "truth.json").write_text(json.dumps(record))
    text = truth_summary(AppSession(model))
    assert "NC->AD flip rate 0.75, closer to the truth than the source in 50%" in text
    assert "localisation AUC n/a" in text and "strength 0.4" in text
    assert "the truth at the edit's size" not in text  # a record written before that row
    record["directions"]["NC->AD"]["rows"]["truth at the edit's size"] = {"flip_rate": 0.7}
    (model / "edit_truth" / "truth.json").write_text(json.dumps(record))
    assert "NC->AD flip rate 0.75 (the truth at the edit's size 0.70), closer" in \
        truth_summary(AppSession(model))
    record["directions"]["NC->AD"]["axioms"] = {"share_explained": 0.07}
    (model / "edit_truth" / "truth.json").write_text(json.dumps(record))
    assert "NC->AD explains 7% of the true change, flip rate 0.75" in \
        truth_summary(AppSession(model))


def test_a_session_leaves_no_work_folder_behind(tiny_model):
    """Each request's files live under the session's temporary folder, removed with the session
    (and at exit): launches and tests used to leave one adni-app-* folder in /tmp apiece."""
    import gc

    session = AppSession(tiny_model)
    folder = session.request_dir().parent
    assert folder.is_dir() and folder.name.startswith("adni-app-")
    del session
    gc.collect()
    assert not folder.exists()
