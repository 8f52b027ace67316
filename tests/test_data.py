import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config import DataConfig
from pipelines.data import (
    CLASS_NAMES,
    LABEL_IDS,
    NULL_LABEL,
    inspect_folder,
    label_id,
    load_split,
    load_train_val,
    patient_id,
    patient_split,
    random_crop,
    random_flip,
    slice_positions,
    stack_summary,
    to_model_input,
    to_native,
)
from pipelines.errors import UserError

from .conftest import run_script


def write_set(root, patients=2, slices=3, size=(256, 240)):
    """A small valid AD_NC folder of random-blob slices (independent of the phantom)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CLASS_NAMES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for p in range(patients):
                for s in range(slices):
                    pixels = rng.integers(0, 255, size[::-1], dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{split}{cls}{p}_{s}.jpeg")
    return root


def test_label_ids_are_fixed_not_listing_order():
    assert CLASS_NAMES == ("NC", "AD") and LABEL_IDS == {"NC": 0, "AD": 1} and NULL_LABEL == 2
    assert label_id("ad") == 1 and label_id(0) == 0 and label_id("1") == 1
    with pytest.raises(UserError, match="unknown label"):
        label_id("MCI")


def test_patient_id_is_before_last_underscore():
    assert patient_id("218391_78.jpeg") == "218391"
    assert patient_id("a_b_c_12.png") == "a_b_c"


@pytest.mark.parametrize("shape", [(240, 256), (256, 240)])
def test_pad_and_crop_back_is_exact_at_native_side(shape):
    pixels = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    square = to_model_input(pixels, 256)
    assert square.shape == (256, 256)
    assert np.array_equal(to_native(square, (shape[1], shape[0])), pixels)
    assert to_model_input(pixels, 64).shape == (64, 64)
    assert to_native(to_model_input(pixels, 64), (shape[1], shape[0])).shape == shape


def test_patient_split_never_shares_a_patient():
    rng = np.random.default_rng(0)
    patients = [f"p{rng.integers(0, 40)}" for _ in range(500)]
    labels = [int(p[1:]) % 2 for p in patients]
    for seed in range(5):
        train, val = patient_split(patients, labels, 0.2, seed)
        assert sorted(train + val) == list(range(500))
        assert not {patients[i] for i in train} & {patients[i] for i in val}
        assert {labels[i] for i in val} == {0, 1}  # both classes validated


def test_train_val_split_by_patient_on_disk(tmp_path):
    root = write_set(tmp_path / "d", patients=4)
    train, val = load_train_val(root, DataConfig(resolution=16, val_patients_fraction=0.25),
                                progress=False)
    assert len(train) + len(val) == 24
    assert not set(train.patients) & set(val.patients)
    assert train.pixels.shape[1:] == (1, 16, 16) and train.pixels.dtype == torch.uint8


def test_flip_mirrors_some_images():
    batch = torch.arange(8 * 4, dtype=torch.float).reshape(2, 1, 4, 4).repeat(8, 1, 1, 1)
    out = random_flip(batch, torch.Generator().manual_seed(0))
    flipped = [bool((o == b.flip(-1)).all()) for o, b in zip(out, batch, strict=True)]
    assert 0 < sum(flipped) < len(flipped)


def test_crops_are_windows_of_their_own_image_at_several_places():
    batch = torch.arange(16 * 16, dtype=torch.float).reshape(1, 1, 16, 16).repeat(6, 1, 1, 1)
    batch = batch + 1000 * torch.arange(6).reshape(6, 1, 1, 1)  # each image its own values
    out = random_crop(batch, 8, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 8, 8)
    corners = set()
    for i, crop in enumerate(out):
        first = int(crop[0, 0, 0]) - 1000 * i
        top, left = divmod(first, 16)
        assert torch.equal(crop, batch[i, :, top:top + 8, left:left + 8])
        corners.add((top, left))
    assert len(corners) > 1
    assert random_crop(batch, 16) is batch  # a crop of the whole image is the image


def test_salted_folder_reports_every_bad_input(tmp_path):
    root = write_set(tmp_path / "d")
    ad = root / "train" / "AD"
    (ad / ".DS_Store").write_bytes(b"\0\1")
    (ad / "Thumbs.db").write_bytes(b"\0")
    (ad / "notes.txt").write_text("hello")
    (ad / "empty_1.jpeg").write_bytes(b"")
    good = (ad / "trainAD0_0.jpeg").read_bytes()
    (ad / "trunc_1.jpeg").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (256, 240), (10, 200, 30)).save(ad / "rgb_1.png")
    Image.fromarray(np.full((240, 256), 40000, dtype=np.uint16)).save(ad / "deep_1.png")
    Image.new("L", (200, 180), 90).save(ad / "odd_1.jpeg")
    info = inspect_folder(root)
    skipped = {s["file"] for s in info["skipped"]}
    assert {"train/AD/.DS_Store", "train/AD/Thumbs.db", "train/AD/notes.txt"} <= skipped
    assert {c["file"] for c in info["corrupt"]} == {"train/AD/empty_1.jpeg",
                                                     "train/AD/trunc_1.jpeg"}
    converted = {c["file"]: c["reason"] for c in info["converted"]}
    assert "RGB" in converted["train/AD/rgb_1.png"]
    assert "I;16" in converted["train/AD/deep_1.png"]
    assert "200x180" in converted["train/AD/odd_1.jpeg"]
    assert info["splits"]["train"]["AD"] == {"images": 6 + 3, "patients": 2 + 3}
    assert info["sizes"] == {"256x240": 24 + 2, "200x180": 1}
    assert info["modes"] == {"L": 24 + 1, "RGB": 1, "I;16": 1}
    # loading stops on corrupt files and names each of them ...
    with pytest.raises(UserError) as err:
        load_split(root, "train", 16, progress=False)
    assert "empty_1.jpeg" in str(err.value) and "trunc_1.jpeg" in str(err.value)
    # ... unless asked to skip them: then they are counted, and conversions reported
    slices = load_split(root, "train", 16, skip_corrupt=True, progress=False)
    assert len(slices) == 12 + 3 and len(slices.corrupt) == 2 and len(slices.converted) == 3
    assert len(slices.skipped) == 3
    deep = slices.pixels[slices.files.index("train/AD/deep_1.png")]
    assert deep.float().max() == 255  # scaled by its own range [0, 40000], not by 65535


def test_layout_problems(tmp_path):
    root = write_set(tmp_path / "d")
    for f in (root / "test" / "NC").iterdir():
        f.unlink()
    (root / "train" / "MCI").mkdir()
    info = inspect_folder(root)
    assert any("test/NC has no images" in p for p in info["problems"])
    assert any("unknown class folder train/MCI" in p for p in info["problems"])
    with pytest.raises(UserError, match="MCI"):
        load_split(root, "train", 16, progress=False)
    missing = write_set(tmp_path / "m")
    for f in sorted((missing / "test").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    (missing / "test").rmdir()
    assert any("missing split" in p for p in inspect_folder(missing)["problems"])
    load_split(missing, "train", 16, progress=False)  # the train split alone is still usable
    with pytest.raises(UserError, match="missing split"):
        load_split(missing, "test", 16, progress=False)


def test_inspect_cli_json_and_exit_codes(tmp_path):
    root = write_set(tmp_path / "d")
    proc = run_script("-m", "pipelines.data", "inspect", root, "--json")
    info = json.loads(proc.stdout)
    assert info["splits"]["test"]["NC"] == {"images": 6, "patients": 2}
    assert info["patients_in_train_and_test"] == []
    (root / "train" / "AD" / "bad_1.jpeg").write_bytes(b"not a jpeg")
    proc = run_script("-m", "pipelines.data", "inspect", root, check=False)
    assert proc.returncode == 2 and "bad_1.jpeg" in proc.stdout + proc.stderr
    proc = run_script("-m", "pipelines.data", "inspect", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sys.executable


def test_levels_from_file_names_gaps_single_slices_and_unsorted_listing():
    files = ["b_12.jpeg", "a_3.jpeg", "a_1.jpeg", "c_7.png", "a_10.jpeg", "b_10.jpeg",
             "a_2.jpeg", "b_11.jpeg", "noslice.jpeg", "d_x.jpeg"]
    patients = [patient_id(f) for f in files]
    got = dict(zip(files, slice_positions(files, patients), strict=True))
    # a: 1, 2, 3, 10 -> the gap stays a gap; the listing order does not matter
    assert got["a_1.jpeg"] == 0 and got["a_10.jpeg"] == 1
    assert got["a_2.jpeg"] == pytest.approx(1 / 9) and got["a_3.jpeg"] == pytest.approx(2 / 9)
    assert (got["b_10.jpeg"], got["b_11.jpeg"], got["b_12.jpeg"]) == (0, 0.5, 1)
    # one slice, no slice number, a non-numeric suffix: the middle level
    assert got["c_7.png"] == got["noslice.jpeg"] == got["d_x.jpeg"] == 0.5
    summary = stack_summary(files, patients)
    assert summary["patients_with_gaps"] == 1 and summary["gap_examples"] == ["a"]
    assert summary["single_slice_patients"] == 3 and summary["files_without_slice_number"] == 2
    assert summary["slices_per_patient"] == {"1": 3, "3": 1, "4": 1}


def test_levels_travel_with_the_slices_and_inspect_reports_stacks(tmp_path):
    root = write_set(tmp_path / "AD_NC", patients=2, slices=3)
    full = load_split(root, "train", 16, progress=False)
    assert full.positions.tolist() == [0, 0.5, 1] * 4
    part = full.subset([2, 4])  # a subset keeps the levels of the whole stack
    assert part.positions.tolist() == [1, 0.5]
    train, val = load_train_val(root, DataConfig(resolution=16, val_patients_fraction=0.5),
                                progress=False)
    assert sorted(train.positions.tolist() + val.positions.tolist()) == sorted([0, 0.5, 1] * 4)
    stacks = inspect_folder(root)["stacks"]
    assert stacks["train"]["slices_per_patient"] == {"3": 4}
    assert stacks["test"]["position_histogram"]["0.4-0.6"] == 4
