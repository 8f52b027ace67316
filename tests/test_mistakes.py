"""The mistakes people make, one row each: the command, its exit code, the words its one message
must contain, and (for the rows that could lose work) the files that must be unchanged after it.
No row may print a traceback."""

import fcntl
import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipelines.data import load_split, to_uint8_grey

from .conftest import TINY, run_script


def run_main(script: str, *args, capsys):
    """A top-level script's main() in this process (no interpreter start-up): (exit code,
    stderr). An exception other than SystemExit fails the test, as a traceback would."""
    import importlib

    main = importlib.import_module(script.removesuffix(".py")).main
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err

NO_DATA = "/no/such/AD_NC"  # config mistakes must be caught before any data is read


def tree_hash(folder):
    """A digest of every file's path and bytes under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def vae_run_copy(tiny_vae_run, tmp_path):
    return shutil.copytree(tiny_vae_run, tmp_path / "vae_run")


def bad_config(tmp_path, text: bytes):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    return path


CONFIG_ROWS = [  # (flags, words in the message)
    (["--resolution", "33"], ["data.resolution", "33", "multiple of 8", "--resolution"]),
    (["--resolution", "-1"], ["data.resolution", "-1"]),
    (["--learning_rate", "-1"], ["vae.learning_rate", "finite number > 0"]),
    (["--adam_beta1", "1.5"], ["adam_beta1", "[0, 1)"]),
    (["--seed", "-1"], ["vae.seed", "2**32"]),
    (["--vae.block_out_channels", "[]"], ["block_out_channels", "non-empty list"]),
    (["--vae.block_out_channels", "[-8, 16]"], ["block_out_channels", "positive integers"]),
    (["--vae.norm_num_groups", "5"], ["norm group", "multiple"]),
    (["--sample.scheduler", "foo"], ["sample.scheduler", "dpmsolver++"]),
    (["--max_grad_norm", "nan"], ["max_grad_norm", "finite"]),
    (["--max_grad_norm", "-1"], ["max_grad_norm", ">= 0"]),
    (["--ema_decay", "1.5"], ["ema_decay", "[0, 1)"]),
    (["--kl_weight", "-1e-6"], ["kl_weight", ">= 0"]),
    (["--lr_warmup_steps", "-5"], ["lr_warmup_steps"]),
    (["--max_train_minutes", "inf"], ["max_train_minutes", "finite"]),
    (["--max_train_steps", "1000000000"], ["max_train_steps", "10,000,000"]),
    (["--train_batch_size", "0"], ["train_batch_size", "from 1"]),
    (["--unet.num_validation_images", "0"], ["num_validation_images", "from 1"]),
    (["--vae.mixed_precision", "fp8"], ["mixed_precision", "no, fp16, bf16"]),
    (["--unet.beta_start", "0.5", "--unet.beta_end", "0.1"], ["beta_start", "below"]),
    (["--unet.level_conditioning", "true", "--unet.conditioning", "cross_attention"],
     ["level_conditioning", "class_embed"]),
    (["--sample.guidance_interval", "[5, 1]"], ["guidance_interval", "0 <= low < high"]),
    (["--sample.guidance_interval", "[1]"], ["guidance_interval", "[low, high]"]),
]


@pytest.mark.parametrize("flags, words", CONFIG_ROWS, ids=lambda v: " ".join(map(str, v))[:40]
                         if isinstance(v, list) else None)
def test_config_mistakes_exit_2_before_reading_data(flags, words, tmp_path, capsys):
    code, err = run_main("train_vae.py", "--config", TINY, "--data", NO_DATA, "--output_dir",
                         tmp_path / "out", *flags, capsys=capsys)
    assert code == 2 and all(w in err for w in words), err
    assert "data folder" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, words", [
    (b"vae: [1, 2]\n", ["section 'vae'", "mapping"]),
    (b"data:\n  resolution: \xff\xfe\n", ["UTF-8"]),
    (b"data: {resolution: 40}\nvae: {block_out_channels: [16, 32, 64, 64, 64]}\n",
     ["data.resolution 40", "downsampling factor 16"]),
])
def test_config_file_mistakes(text, words, tmp_path, capsys):
    code, err = run_main("train_vae.py", "--config", bad_config(tmp_path, text), "--data",
                         NO_DATA, "--output_dir", tmp_path / "out", capsys=capsys)
    assert code == 2 and all(w in err for w in words), err


def test_describe_lists_every_key_with_its_rule():
    proc = run_script("-m", "pipelines.config", "--describe")
    assert "| unet.learning_rate | float | 0.0003 | a finite number > 0 |" in proc.stdout
    assert "| sample.scheduler | str | 'dpmsolver++' | one of" in proc.stdout


# ----------------------------------------------------------------------------- runs are owned


def test_new_run_into_an_earlier_run_is_refused(vae_run_copy, tiny_data):
    before = tree_hash(vae_run_copy)
    proc = run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
                      vae_run_copy, check=False)
    assert proc.returncode == 2 and "already holds a vae run" in proc.stderr
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert tree_hash(vae_run_copy) == before


def test_unet_into_a_vae_run_is_refused_even_with_resume(vae_run_copy, tiny_data):
    before = tree_hash(vae_run_copy)
    for extra in ([], ["--resume_from_checkpoint", "latest"], ["--overwrite"]):
        proc = run_script("train_unet.py", "--config", TINY, "--vae", vae_run_copy / "vae",
                          "--data", tiny_data, "--output_dir", vae_run_copy, *extra, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "vae run" in proc.stderr or "which this command reads" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert tree_hash(vae_run_copy) == before


def test_overwrite_replaces_an_earlier_run(vae_run_copy, tiny_data):
    (vae_run_copy / "checkpoints" / "checkpoint-999").mkdir()
    run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
               vae_run_copy, "--overwrite")
    assert not (vae_run_copy / "checkpoints" / "checkpoint-999").exists()
    assert json.loads((vae_run_copy / "run.json").read_text())["kind"] == "vae"


def test_a_folder_in_use_is_locked_and_a_stale_lock_is_named(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
                          out, check=False)
        assert proc.returncode == 2 and "in use by another run (pid 4242" in proc.stderr
    # the holder is gone: its lock file stays, and the next run names it and goes on
    proc = run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
                      out, "--max_train_steps", "2")
    assert "no longer runs (pid 4242" in proc.stderr


def test_sample_never_mixes_runs(tiny_model, tmp_path):
    out = tmp_path / "s"
    args = ["sample.py", "--model", tiny_model, "--label", "AD", "--num_inference_steps", "1",
            "--out", out]
    run_script(*args, "--num_images", "3")
    run_script(*args, "--num_images", "1")
    assert len(list((out / "AD").glob("*.png"))) == 1
    assert json.loads((out / "sample.json").read_text())["labels"]["AD"]["num_images"] == 1
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = run_script("sample.py", "--model", tiny_model, "--out", foreign, check=False)
    assert proc.returncode == 2 and "already holds other files" in proc.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- no garbage


def test_a_diverged_vae_saves_nothing(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir", out,
                      "--learning_rate", "1e9", "--disc_weight", "0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "non-finite" in proc.stderr or "loss became" in proc.stderr
    assert not (out / "vae").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--guidance_scale", "inf"], ["finite number >= 1"]),
    (["--guidance_scale", "nan"], ["finite number >= 1"]),
    (["--scheduler", "ddim", "--num_inference_steps", "5000"], ["from 1 to 1000"]),
    (["--device", "tpu"], ["--device tpu", "present: cpu"]),
    (["--label", "MCI"], ["unknown label 'MCI'"]),
    (["--guidance_interval", "3", "1"], ["--guidance_interval", "0 <= LOW < HIGH"]),
    (["--guidance_interval", "-1", "nan"], ["--guidance_interval", "0 <= LOW < HIGH"]),
])
def test_sample_mistakes(tiny_model, tmp_path, args, words, capsys):
    code, err = run_main("sample.py", "--model", tiny_model, "--out", tmp_path / "s", *args,
                         capsys=capsys)
    assert code == 2 and all(w in err for w in words), err


LEVEL_ROWS = [  # --slice_position values, on a level-conditioned model
    (["-0.1"], ["--slice_position", "[0, 1]", "'-0.1'"]),
    (["1.5"], ["--slice_position", "[0, 1]", "'1.5'"]),
    (["abc"], ["--slice_position", "'abc'"]),
    (["nan"], ["--slice_position", "'nan'"]),
    (["0.2", "0.4"], ["--slice_position", "'all K'"]),
    (["all"], ["--slice_position", "K from 2"]),
    (["all", "1"], ["--slice_position", "K from 2"]),
]


@pytest.mark.parametrize("values, words", LEVEL_ROWS, ids=lambda v: " ".join(map(str, v))[:20])
def test_bad_slice_positions(tiny_level_model, tmp_path, values, words, capsys):
    code, err = run_main("sample.py", "--model", tiny_level_model, "--out", tmp_path / "s",
                         "--slice_position", *values, capsys=capsys)
    assert code == 2 and all(w in err for w in words) and err.count("error:") == 1, err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_level_for_a_label_only_model(tiny_model, tmp_path, capsys):
    code, err = run_main("sample.py", "--model", tiny_model, "--out", tmp_path / "s",
                         "--slice_position", "0.3", capsys=capsys)
    assert code == 2 and "label-only" in err and "--unet.level_conditioning true" in err, err


# ----------------------------------------------------------------------------- damaged inputs


@pytest.mark.parametrize("damage, words", [
    ("delete unet", ["component unet/", "missing"]),
    ("truncate unet", ["component unet/", "cannot be loaded"]),
    ("corrupt index", ["not a model of this project"]),
    ("corrupt config", ["config.yaml is damaged"]),
])
def test_damaged_model_folders(tiny_model, tmp_path, damage, words, capsys):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "delete unet":
        shutil.rmtree(folder / "unet")
    elif damage == "truncate unet":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "corrupt index":
        (folder / "model_index.json").write_text("{not json")
    else:
        (folder / "config.yaml").write_text("data: [unclosed\n")
    code, err = run_main("sample.py", "--model", folder, "--out", tmp_path / "s", capsys=capsys)
    assert code == 2 and all(w in err for w in words), err


def test_resume_from_a_truncated_checkpoint_names_it(tiny_data, tmp_path):
    out = tmp_path / "run"
    run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir", out,
               "--max_train_steps", "3", "--checkpointing_steps", "3")
    model = out / "checkpoints" / "checkpoint-3" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:500])
    proc = run_script("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir", out,
                      "--resume_from_checkpoint", "latest", check=False)
    assert proc.returncode == 2 and "checkpoint-3 cannot be loaded" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_truncated_latent_cache_is_rebuilt(tiny_vae_run, tiny_data, tmp_path):
    from pipelines.config import load_config
    from pipelines.ldm.latents import build_latent_cache
    from pipelines.vae.model import load_vae

    vae = load_vae(tiny_vae_run / "vae")
    slices = load_split(tiny_data, "train", load_config(TINY).data.resolution, progress=False)
    good = build_latent_cache(vae, slices, tmp_path, flip=False).mean.clone()
    (path,) = tmp_path.glob("latents-*.safetensors")
    head = path.read_bytes()[:300]
    path.unlink()  # a new, truncated file (the loaded tensors may map the old one)
    path.write_bytes(head)
    again = build_latent_cache(vae, slices, tmp_path, flip=False)
    assert np.array_equal(again.mean.numpy(), good.numpy())


@pytest.mark.parametrize("script, args, words", [
    ("evaluate.py", ["--inception_weights", "w.pth"], ["torch-fidelity"]),
    ("embed.py", ["--max_images", "3"], ["--max_images", "at least"]),
    ("embed.py", ["--out", "/proc/not/writable"], ["--out", "cannot be written"]),
])
def test_evaluation_mistakes(tiny_model, tiny_data, tmp_path, script, args, words, capsys):
    code, err = run_main(script, "--model", tiny_model, "--data", tiny_data, *args,
                         capsys=capsys)
    assert code == 2 and all(w in err for w in words), err


@pytest.mark.parametrize("args, words", [
    (["--image", "/no/such/123_1.jpeg"], ["--image /no/such/123_1.jpeg", "no such file"]),
    (["--to", "MCI"], ["--to", "unknown label 'MCI'", "or flip"]),
    (["--strength", "0"], ["--strength", "(0, 1]"]),
    (["--scheduler", "ddim"], ["--scheduler", "DDIM"]),
    (["--image", "README.md"], ["its label is unknown", "--label"]),
    (["--image", "README.md", "--label", "MCI"], ["unknown label 'MCI'"]),
    (["--image", "README.md", "--label", "AD"], ["not a readable image"]),
    (["--draws", "0"], ["--draws", "whole number from 1 to 1000"]),
    (["--change_from", "reconstruction"], ["--change_from reconstruction", "--method posterior",
                                           "--method inversion"]),
])
def test_edit_mistakes(tiny_model, tiny_data, tmp_path, args, words, capsys):
    code, err = run_main("edit.py", "--model", tiny_model, "--data", tiny_data, "--out",
                         tmp_path / "e", *args, capsys=capsys)
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "e").exists()


def test_skip_corrupt_is_accepted_where_it_is_advised(tiny_model, tiny_data, tmp_path):
    run_script("embed.py", "--model", tiny_model, "--data", tiny_data, "--skip_corrupt", "true",
               "--method", "tsne", "--out", tmp_path / "e")


def test_output_dir_that_is_a_file(tiny_data, tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("x")
    code, err = run_main("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
                         path, capsys=capsys)
    assert code == 2 and "is a file" in err


def test_demo_with_a_missing_config_stops_before_writing_data(tmp_path):
    proc = run_script("-m", "tools.demo", "--config", tmp_path / "missing.yaml", "--data",
                      tmp_path / "data", "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- data honesty


def test_names_without_patient_and_patients_under_both_labels_are_reported(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    first_nc = sorted((data / "train" / "NC").glob("*.jpeg"))[0]
    shutil.copy(first_nc, data / "train" / "NC" / "scan.jpeg")
    patient = first_nc.name.rsplit("_", 1)[0]
    shutil.copy(first_nc, data / "train" / "AD" / f"{patient}_999.jpeg")
    proc = run_script("-m", "pipelines.data", "inspect", data)
    assert "not named <patient>_<slice>" in proc.stdout and "both AD and NC" in proc.stdout
    load = run_script("-c", f"from pipelines.data import load_split; load_split({str(data)!r}, "
                      "'train', 32, progress=False)")
    assert "not named <patient>_<slice>" in load.stderr and "both AD and NC" in load.stderr


def test_16_bit_images_are_scaled_by_their_range_and_oversized_ones_are_corrupt(tiny_data,
                                                                                tmp_path,
                                                                                monkeypatch):
    twelve_bit = (np.linspace(0, 4095, 256 * 240).reshape(240, 256)).astype(np.uint16)
    arr, note = to_uint8_grey(Image.fromarray(twelve_bit))
    assert arr.max() == 255 and arr.mean() > 100 and "range" in note
    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every slice is now "too large"
    slices = load_split(data, "test", 32, skip_corrupt=True, progress=False)
    assert len(slices) == 0 and len(slices.corrupt) > 0


def test_a_file_name_that_is_not_utf8_is_named(tiny_data, tmp_path, capsys):
    import os

    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    first = sorted((data / "test" / "AD").glob("*.jpeg"))[0]
    os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9_1.jpeg"))
    from pipelines.data import main as data_main

    try:
        code = data_main(["inspect", str(data)])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr()
    assert code == 2 and "not valid UTF-8" in err.out + err.err


def test_batch_larger_than_the_data_and_one_patient_per_label(tiny_data, tiny_model, tmp_path,
                                                              capsys):
    code, err = run_main("train_vae.py", "--config", TINY, "--data", tiny_data, "--output_dir",
                         tmp_path / "big", "--train_batch_size", "5000", capsys=capsys)
    assert code == 2 and "more than the" in err and "training examples" in err, err
    data = shutil.copytree(tiny_data, tmp_path / "AD_NC")
    for label in ("AD", "NC"):  # keep one patient per label in train
        files = sorted((data / "train" / label).glob("*.jpeg"))
        keep = files[0].name.rsplit("_", 1)[0]
        for path in files:
            if not path.name.startswith(keep + "_"):
                path.unlink()
    code, err = run_main("evaluate.py", "--model", tiny_model, "--data", data, "--out",
                         tmp_path / "eval", "--num_images", "2", capsys=capsys)
    assert code == 2 and "at least 2" in err and "patients" in err, err
