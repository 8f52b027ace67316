"""The silent mistakes, one row each: nothing lost, nothing mixed, nothing blank with exit 0.

Each row runs the command a user would type (in this process where it can, for speed) and checks
the exit code, the words of its one message, and that the files it must not touch are unchanged.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from pipelines.config import load_config
from pipelines.errors import UserError, cli_entry, resume_hint
from pipelines.runs import claim_run_dir, prepare_output_dir, release_run_dir
from pipelines.sampling import check_images
from pipelines.training import divergence_advice

from .conftest import TINY, run_script
from .test_mistakes import run_main, tree_hash


@pytest.fixture
def vae_run_copy(tiny_vae_run, tmp_path):
    return shutil.copytree(tiny_vae_run, tmp_path / "vae_run")


def train_vae_args(data, out, *extra):
    return ["--config", TINY, "--data", data, "--output_dir", out, *extra]


# ----------------------------------------------------------------------------- nothing lost


@pytest.mark.parametrize("what", ["a copy of the data", "a user's notes"])
def test_overwrite_never_deletes_a_folder_this_project_did_not_write(what, tiny_data, tmp_path,
                                                                     capsys):
    if what == "a copy of the data":
        folder = shutil.copytree(tiny_data / "train" / "AD", tmp_path / "copy")
    else:
        folder = tmp_path / "notes"
        folder.mkdir()
        (folder / "notes.txt").write_text("keep me")
    before = tree_hash(folder)
    names = sorted(p.name for p in folder.iterdir())
    code, err = run_main("train_vae.py", *train_vae_args(tiny_data, folder, "--overwrite"),
                         capsys=capsys)
    assert code == 2 and "did not write" in err and names[0] in err, err
    assert "--overwrite" in err and "replace it with --overwrite" not in err
    assert tree_hash(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == names  # no run.json, no .lock left


def test_overwrite_of_our_run_keeps_what_we_did_not_write(vae_run_copy, tiny_data):
    (vae_run_copy / "my_notes.txt").write_text("keep me")
    proc = run_script("train_vae.py", *train_vae_args(tiny_data, vae_run_copy, "--overwrite",
                                                      "--max_train_steps", "1"))
    assert (vae_run_copy / "my_notes.txt").read_text() == "keep me"
    assert "my_notes.txt, not written by this project; kept" in proc.stderr
    assert (vae_run_copy / "vae").is_dir() and not (vae_run_copy / ".lock").exists()


def test_resume_without_checkpoints_never_replaces_a_finished_run(vae_run_copy, tiny_data,
                                                                  capsys):
    shutil.rmtree(vae_run_copy / "checkpoints")
    before = tree_hash(vae_run_copy)
    code, err = run_main("train_vae.py", *train_vae_args(
        tiny_data, vae_run_copy, "--resume_from_checkpoint", "latest"), capsys=capsys)
    assert code == 2 and "no checkpoint to continue from" in err and "--overwrite" in err, err
    assert tree_hash(vae_run_copy) == before


def test_a_script_folder_with_foreign_files_is_never_emptied(tmp_path):
    out = tmp_path / "samples"
    (out / "AD").mkdir(parents=True)
    (out / "sample.json").write_text("{}")
    (out / "AD" / "AD_0000.png").write_bytes(b"png")
    (out / "scan.nii.gz").write_bytes(b"a user's volume")
    with pytest.raises(UserError, match="scan.nii.gz, which this project did not write"):
        prepare_output_dir(out, "sample.json")
    assert (out / "scan.nii.gz").exists() and (out / "AD" / "AD_0000.png").exists()
    (out / "scan.nii.gz").unlink()
    prepare_output_dir(out, "sample.json")  # only its own kinds of files: emptied
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- nothing mixed


@pytest.mark.parametrize("flags, words", [
    (["--resolution", "64"], ["data.resolution: 32 -> 64"]),
    (["--vae.latent_channels", "4", "--vae.kl_weight", "1e-3"],
     ["vae.latent_channels: 2 -> 4", "vae.kl_weight: 1e-06 -> 0.001"]),
    (["--train_batch_size", "4"], ["vae.train_batch_size: 8 -> 4"]),
])
def test_resume_with_changed_settings_is_refused(vae_run_copy, tiny_data, flags, words, capsys):
    before = tree_hash(vae_run_copy)
    code, err = run_main("train_vae.py", *train_vae_args(
        tiny_data, vae_run_copy, "--resume_from_checkpoint", "latest", *flags), capsys=capsys)
    assert code == 2 and all(w in err for w in words) and "max_train_steps" in err, err
    assert tree_hash(vae_run_copy) == before


def test_resume_may_change_the_budget_and_logging(vae_run_copy):
    cfg = load_config(TINY, ["--max_train_steps", "9", "--checkpointing_steps", "2",
                             "--vae.mixed_precision", "bf16", "--unet.learning_rate", "1"],
                      section="vae")
    claim_run_dir(vae_run_copy, "vae", "latest", config=cfg)  # the unet section is not the run's
    release_run_dir(vae_run_copy)
    assert not (vae_run_copy / ".lock").exists()


@pytest.mark.parametrize("script", ["train_vae.py", "sample.py", "embed.py"])
def test_no_output_inside_the_data(script, tiny_data, tiny_model, capsys):
    inside = tiny_data / "train" / "AD" / "run"
    if script == "train_vae.py":
        args = train_vae_args(tiny_data, inside)
    else:
        args = ["--model", tiny_model, "--out", inside] + \
            (["--data", tiny_data] if script == "embed.py" else [])
    code, err = run_main(script, *args, capsys=capsys)
    assert code == 2 and "inside" in err and str(tiny_data) in err, err
    assert not inside.exists()


def test_no_run_folder_holding_its_inputs(tiny_data, tmp_path, capsys):
    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    code, err = run_main("train_vae.py", *train_vae_args(data, tmp_path), capsys=capsys)
    assert code == 2 and "holds" in err and "which this command reads" in err, err


# ----------------------------------------------------------------------------- nothing blank


@pytest.mark.parametrize("images, words", [
    (torch.full((2, 1, 8, 8), float("nan")), ["2 of 2", "non-finite", "--guidance_scale"]),
    (torch.cat([torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8)]), ["1 of 2", "blank"]),
])
def test_blank_or_non_finite_images_are_never_saved(images, words):
    with pytest.raises(UserError) as err:
        check_images(images, "AD", {"guidance_scale": 1e3, "num_inference_steps": 4})
    assert all(w in str(err.value) for w in words), err.value
    check_images(torch.rand(2, 1, 8, 8), "AD", {})  # ordinary images pass


@pytest.mark.parametrize("args, words", [
    (["--guidance_scale", "1e30"], ["at most 100", "saturates"]),
    (["--seed", str(2**64)], ["--seed", "2**32 - 1"]),
    (["--seed", "-1"], ["--seed", "from 0"]),
    (["--num_images", "1000000000"], ["--num_images", "100,000"]),
])
def test_numbers_past_their_range(tiny_model, tmp_path, args, words, capsys):
    code, err = run_main("sample.py", "--model", tiny_model, "--out", tmp_path / "s", *args,
                         capsys=capsys)
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "s").exists()


def test_a_sample_in_batches_is_the_sample_at_once(tiny_model, tmp_path):
    from PIL import Image

    from pipelines.sampling import generate, load_pipeline, sampling_settings

    run_script("sample.py", "--model", tiny_model, "--out", tmp_path / "s", "--label", "AD",
               "--num_images", "3", "--batch_size", "2", "--num_inference_steps", "1")
    pipe = load_pipeline(tiny_model)
    at_once = generate(pipe, "AD", 3, seed=0, batch_size=3, progress=False,
                       settings=sampling_settings(pipe, num_inference_steps=1))
    saved = np.stack([np.asarray(Image.open(tmp_path / "s" / "AD" / f"AD_{i:04d}.png"))
                      for i in range(3)])
    assert np.array_equal(saved, at_once)


def test_symlinks_in_the_data_are_counted(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    ad = data / "train" / "AD"
    (ad / "dangling.jpeg").symlink_to(tmp_path / "gone.jpeg")
    (ad / "loop_a.jpeg").symlink_to(ad / "loop_b.jpeg")
    (ad / "loop_b.jpeg").symlink_to(ad / "loop_a.jpeg")
    (ad / "linked").symlink_to(data / "test" / "NC", target_is_directory=True)
    proc = run_script("-m", "pipelines.data", "inspect", data)
    for words in ("dangling.jpeg: a symbolic link to nothing", "loop_a.jpeg: a symbolic link "
                  "in a loop", "linked: a symbolic link to a folder"):
        assert words in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize("text, words", [
    (b"data:\n  resolution: 32\n  resolution: 64\n", ["'resolution' appears twice", "line 3"]),
    (b"vae: {}\nvae: {}\n", ["'vae' appears twice"]),
    (b"vae:\n  prediction_type: no\n", []),  # not a vae key: named as unknown
    (b"unet:\n  prediction_type: no\n", ["expects text", "quotes"]),
])
def test_config_file_rows(text, words, tmp_path, capsys):
    from pipelines.config import main as config_main

    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    assert config_main(["--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_mixed_precision_no_is_the_documented_value(tmp_path):
    assert load_config(TINY, ["--vae.mixed_precision", "no"]).vae.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("unet:\n  mixed_precision: no\n")
    assert load_config(path).unet.mixed_precision == "no"


def test_config_that_is_a_folder(tmp_path, capsys):
    code, err = run_main("train_vae.py", "--config", tmp_path, "--data", tmp_path,
                         capsys=capsys)
    assert code == 2 and "is a folder" in err, err


@pytest.mark.parametrize("args, words", [
    (["--image", "{data}/test/AD"], ["is a folder", "--data"]),
    (["--split", "validation"], ["--split", "'train'", "'test'"]),
])
def test_edit_rows(tiny_model, tiny_data, tmp_path, args, words, capsys):
    args = [a.format(data=tiny_data) for a in args]
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--out",
                         tmp_path / "e", *args, capsys=capsys)
    assert code == 2 and all(w in err for w in words), err


def test_edit_with_a_stylegan2_model(tiny_gan, tiny_data, tmp_path, capsys):
    code, err = run_main("edit.py", "--model", tiny_gan, "--data", tiny_data, "--out",
                         tmp_path / "e", "--num_images", "2", capsys=capsys)
    assert code == 2 and "StyleGAN2Pipeline" in err and "train_unet.py" in err, err


def test_a_damaged_vae(tiny_vae_run, tiny_data, tmp_path, capsys):
    vae = shutil.copytree(tiny_vae_run / "vae", tmp_path / "vae")
    weights = vae / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    code, err = run_main("train_unet.py", "--config", TINY, "--vae", vae, "--data", tiny_data,
                         "--output_dir", tmp_path / "run", capsys=capsys)
    assert code == 2 and "cannot be loaded" in err and "train_vae.py" in err, err


def test_divergence_advice_follows_the_precision():
    assert "--mixed_precision no" in divergence_advice("bf16", True)
    assert "--mixed_precision no" not in divergence_advice("no", True)
    assert "already in full precision" in divergence_advice("no", False)


def test_ctrl_c_says_how_to_continue(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train_unet.py", "--config", "c.yaml", "--overwrite"])

    @cli_entry
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "interrupted" in err
    assert "train_unet.py --config c.yaml --resume_from_checkpoint latest" in err, err
    assert "sample.py" not in resume_hint(["sample.py"]) and "again" in resume_hint(["sample.py"])


def test_a_finished_run_leaves_no_lock(tiny_data, tmp_path):
    out = tmp_path / "run"
    run_script("train_vae.py", *train_vae_args(tiny_data, out, "--max_train_steps", "1"))
    assert json.loads((out / "run.json").read_text())["kind"] == "vae"
    assert not (out / ".lock").exists()


def test_resume_on_another_vae_is_refused(tiny_vae_run, tmp_path):
    from pipelines.runs import folder_digest

    run = tmp_path / "unet_run"
    vae = folder_digest(tiny_vae_run / "vae")
    assert vae == folder_digest(tiny_vae_run) and vae is not None  # a run folder: its vae/
    claim_run_dir(run, "unet", inputs={"vae": vae})
    release_run_dir(run)
    (run / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(UserError, match="trained on another --vae"):
        claim_run_dir(run, "unet", "latest", inputs={"vae": "0" * 64})
    claim_run_dir(run, "unet", "latest", inputs={"vae": vae})  # the same VAE: continues
    release_run_dir(run)


@pytest.mark.parametrize("args, words", [
    (["--config", TINY, "--config", TINY], ["--config is given twice"]),
    (["--config", TINY, "--max_train_steps", "3", "--vae.max_train_steps", "4"],
     ["vae.max_train_steps is given twice"]),
    (["--config", TINY, "--resume_from_checkpoint", "lastest"], ["lastest", "'latest'"]),
])
def test_what_argparse_would_drop_silently(args, words, vae_run_copy, tiny_data, capsys):
    before = tree_hash(vae_run_copy)
    code, err = run_main("train_vae.py", *args, "--data", tiny_data, "--output_dir",
                         vae_run_copy, capsys=capsys)
    assert code == 2 and all(w in err for w in words), err
    assert tree_hash(vae_run_copy) == before
