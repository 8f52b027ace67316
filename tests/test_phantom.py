"""The stand-in AD_NC generator: layout, format, determinism, class difference, user errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from pipelines.data import (
    CLASS_NAMES,
    COUNTERFACTUAL_DIR,
    NATIVE_SIZE,
    SPLITS,
    inspect_folder,
    load_split,
    patient_id,
)
from pipelines.errors import UserError
from tools import phantom

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"train_patients": 2, "test_patients": 2, "slices": 3}


def _files(root: Path, under: tuple[str, ...] = SPLITS) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpeg"))
            if p.relative_to(root).parts[0] in under}


def _dark_fraction(pixels: np.ndarray) -> float:
    """Share of the brain darker than 45% of its white matter: CSF, ventricles, open sulci."""
    brain = ndi.binary_fill_holes(pixels > 10)
    white = np.percentile(pixels[brain], 90)
    return float(((pixels < 0.45 * white) & brain).sum() / brain.sum())


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "AD_NC"
    counts = phantom.write_phantom(out, seed=0, workers=1, **SMALL)
    assert counts == {s: {c: 2 * 3 for c in CLASS_NAMES} for s in SPLITS}
    return out


def test_layout_names_and_format(small_set):
    for split in SPLITS:
        for label in CLASS_NAMES:
            files = sorted((small_set / split / label).iterdir())
            assert len(files) == 6
            by_patient: dict[str, list[int]] = {}
            for path in files:
                pid, slice_id = path.stem.rsplit("_", 1)
                assert path.suffix == ".jpeg" and pid.isdigit() and len(pid) == 6
                assert patient_id(path.name) == pid
                by_patient.setdefault(pid, []).append(int(slice_id))
                with Image.open(path) as image:
                    assert image.format == "JPEG" and image.mode == "L"
                    assert image.size == NATIVE_SIZE == (256, 240)
                    pixels = np.asarray(image)
                assert pixels[:5].max() < 16 and pixels[:, :5].max() < 16  # black background
                assert pixels.max() > 150  # white matter
            assert len(by_patient) == 2
            for ids in by_patient.values():  # consecutive slice numbers
                assert sorted(ids) == list(range(min(ids), min(ids) + 3))
    manifest = json.loads((small_set / phantom.MANIFEST).read_text())
    assert manifest["seed"] == 0 and len(manifest["patients"]) == 8
    assert not (small_set / phantom.PARTIAL_MARKER).exists()
    assert not list(small_set.rglob("*.tmp"))


def test_inspect_reports_exact_counts(small_set):
    info = inspect_folder(small_set)
    assert info["splits"] == {s: {c: {"images": 6, "patients": 2} for c in CLASS_NAMES}
                              for s in SPLITS}
    assert info["patients_in_train_and_test"] == []
    assert info["problems"] == [] and info["corrupt"] == [] and info["converted"] == []
    assert info["sizes"] == {"256x240": 24} and info["modes"] == {"L": 24}


def test_patient_ids_unique_across_splits():
    jobs = phantom.plan("x", 30, 10, 20, seed=3)
    assert len({j.pid for j in jobs}) == len(jobs) == 80
    train = {j.pid for j in jobs if j.split == "train"}
    assert not train & {j.pid for j in jobs if j.split == "test"}


def test_deterministic_for_a_seed_and_across_workers(small_set, tmp_path):
    again = tmp_path / "again"
    phantom.write_phantom(again, seed=0, workers=2, **SMALL)
    assert _files(again) == _files(small_set)
    other = tmp_path / "other"
    phantom.write_phantom(other, seed=1, workers=1, **SMALL)
    assert set(_files(other)) != set(_files(small_set))  # other patient ids
    first = next(iter(_files(other).values()))
    assert first not in _files(small_set).values()


def test_complete_set_is_not_rewritten(small_set, capsys):
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*.jpeg")}
    phantom.write_phantom(small_set, seed=0, workers=1, **SMALL)
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in small_set.rglob("*.jpeg")}


def test_interrupted_run_is_finished_and_cleaned(tmp_path):
    out = tmp_path / "set"
    phantom.write_phantom(out, train_patients=1, test_patients=1, slices=2, workers=1)
    (out / phantom.MANIFEST).unlink()  # as if killed before the end
    (out / phantom.PARTIAL_MARKER).write_text("{}")
    (out / "train" / "AD" / ".123_70.jpeg.99.tmp").write_bytes(b"half")
    (out / "train" / "AD" / "999999_70.jpeg").write_bytes(b"old")
    phantom.write_phantom(out, train_patients=1, test_patients=1, slices=2, workers=1)
    assert len(list(out.rglob("*.jpeg"))) == 8 and not list(out.rglob("*.tmp"))
    assert (out / phantom.MANIFEST).exists() and not (out / phantom.PARTIAL_MARKER).exists()


def test_ad_shows_more_atrophy_than_nc():
    """Averaged over patients, AD slices hold more dark CSF (ventricles, sulci) than NC."""
    fractions = {}
    for label in CLASS_NAMES:
        values = []
        for index in range(6):
            patient = phantom.draw_patient(0, "train", label, index, "100000")
            values += [_dark_fraction(s) for s in phantom.render(patient, slices=3)]
        fractions[label] = np.mean(values)
    assert fractions["AD"] > fractions["NC"] + 0.03, fractions


def test_severity_distributions_overlap_but_differ():
    sev = {c: [phantom.draw_patient(0, "train", c, i, "1").severity for i in range(200)]
           for c in CLASS_NAMES}
    assert 0.5 < np.mean(sev["AD"]) < 0.7 and 0.1 < np.mean(sev["NC"]) < 0.3
    assert max(sev["NC"]) > min(sev["AD"])  # not trivially separable


@pytest.mark.parametrize("kwargs", [{"train_patients": 0}, {"test_patients": -1},
                                    {"slices": 0}, {"slices": 1000}, {"seed": -1},
                                    {"workers": 0}, {"train_patients": 2.5},
                                    {"test_patients": 2, "counterfactuals": 3},
                                    {"counterfactuals": -1}])
def test_bad_counts_are_user_errors(tmp_path, kwargs):
    with pytest.raises(UserError):
        phantom.write_phantom(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_out_that_is_a_file_or_foreign_folder_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        phantom.write_phantom(a_file, **SMALL)
    foreign = tmp_path / "real_data"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="not empty"):
        phantom.write_phantom(foreign, **SMALL)
    assert list(foreign.iterdir()) == [foreign / "train"]


def test_cli_exits_2_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.phantom", "--out",
                           str(tmp_path / "x"), "--train_patients", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --train_patients") and "Traceback" not in proc.stderr


def test_cli_refuses_a_file_as_out(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "tools.phantom", "--out", str(a_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is a file" in proc.stderr


# ----------------------------------------------------------------------------- paired truth


@pytest.fixture(scope="module")
def paired_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paired") / "AD_NC"
    phantom.write_phantom(out, seed=0, workers=1, counterfactuals=1, **SMALL)
    return out


def test_counterfactuals_leave_the_set_unchanged_and_are_deterministic(small_set, paired_set,
                                                                      tmp_path):
    assert _files(paired_set) == _files(small_set)  # train/ and test/: the same bytes
    pairs = _files(paired_set, (COUNTERFACTUAL_DIR,))
    assert sorted({Path(name).parent.name for name in pairs}) == ["AD_to_NC", "NC_to_AD"]
    assert len(pairs) == 2 * 3
    again = tmp_path / "again"
    phantom.write_phantom(again, seed=0, workers=2, counterfactuals=1, **SMALL)
    assert _files(again, (COUNTERFACTUAL_DIR,)) == pairs
    manifest = json.loads((paired_set / COUNTERFACTUAL_DIR / phantom.PAIRS_MANIFEST).read_text())
    assert manifest["counterfactuals"] == 1 and len(manifest["patients"]) == 2
    for record in manifest["patients"]:
        assert record["target"] == phantom.other_label(record["label"])
        assert record["counterfactual_severity"] == pytest.approx(
            phantom.counterfactual_severity(record["severity"], record["label"]), abs=1e-3)
        for name in record["files"]:  # each truth has its source of the same name
            source = paired_set / record["source"] / name
            truth = paired_set / record["folder"] / name
            with Image.open(source) as a, Image.open(truth) as b:
                assert a.size == b.size == NATIVE_SIZE and a.mode == b.mode == "L"
                assert a.quantization == b.quantization  # the same JPEG quality


def test_the_rank_rule_moves_every_patient_the_way_its_label_does():
    """The default counterfactual keeps the patient's quantile: NC patients gain severity, AD
    patients lose it, and their order is kept; the other class's mean (``typical``) would give
    an AD patient drawn below it more atrophy as its "without AD" version."""
    grid = np.linspace(0.01, 0.99, 25)
    for label, sign in (("NC", 1), ("AD", -1)):
        moved = [phantom.counterfactual_severity(s, label) for s in grid]
        assert all(sign * (m - s) > 0 for s, m in zip(grid, moved, strict=True)), label
        assert np.all(np.diff(moved) > 0) and all(0 <= m <= 1 for m in moved)
        back = [phantom.counterfactual_severity(m, phantom.other_label(label)) for m in moved]
        assert np.allclose(back, grid, atol=1e-6)  # the two directions invert each other
    assert phantom.counterfactual_severity(0.15, "AD", "typical") > 0.15
    shift = phantom.typical_severity("AD") - phantom.typical_severity("NC")
    assert phantom.counterfactual_severity(0.3, "NC", "additive") == pytest.approx(0.3 + shift)
    assert phantom.counterfactual_severity(0.1, "AD", "additive") == 0.0  # clipped
    with pytest.raises(ValueError, match="unknown counterfactual rule"):
        phantom.counterfactual_severity(0.5, "AD", "mean")


def test_pairs_differ_only_where_the_atrophy_acts():
    """Rendered without JPEG: outside the pixels the atrophy warps reach or the sulcal loss can
    touch (widened by the 0.5 px blur), the two renderings are equal to the last bit."""
    tmpl = phantom.load_templates()
    for label in CLASS_NAMES:
        drawn = phantom.draw_patient(0, "test", label, 0, "100000")
        other = phantom.counterfactual(drawn)
        assert other.severity != drawn.severity and np.array_equal(other.size, drawn.size)
        source, truth = phantom.render(drawn, 3), phantom.render(other, 3)
        rows, cols = phantom._brain_box(drawn, 3, tmpl)
        grid = phantom.frame_mm(drawn, 3, rows, cols)
        acts = np.zeros(source.shape, dtype=bool)
        window = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        points = [phantom.sample_points(p, tmpl, *grid) for p in (drawn, other)]
        moved = (np.abs(points[0] - points[1]) > 0).any(0)
        cortex = sum(phantom._sample(tmpl.cortex, p, tmpl.z0) for p in points) > 0
        acts[window] = moved | cortex
        acts = ndi.binary_dilation(acts, np.ones((1, 5, 5), dtype=bool))
        changed = source != truth
        assert changed.any() and not (changed & ~acts).any(), label
        brain = source > 10
        assert (~changed & brain).sum() > 0.1 * brain.sum()  # much of the brain is untouched
        if label == "NC":  # NC -> AD: ventricles and sulci visibly open
            assert (np.abs(source.astype(int) - truth) > 20).sum() > 1000


def test_inspect_and_loading_ignore_the_counterfactuals(paired_set):
    info = inspect_folder(paired_set)
    assert info["splits"] == {s: {c: {"images": 6, "patients": 2} for c in CLASS_NAMES}
                              for s in SPLITS}
    assert info["problems"] == []
    skipped = {s["file"]: s["reason"] for s in info["skipped"]}
    assert "never training or test data" in skipped[f"{COUNTERFACTUAL_DIR}/"]
    test = load_split(paired_set, "test", 32, progress=False)
    assert len(test) == 12 and all(f.startswith("test/") for f in test.files)


def test_more_counterfactuals_later_rewrite_only_them(paired_set, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(paired_set, tmp_path / "copy")
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*.jpeg")
              if p.relative_to(copy).parts[0] in SPLITS}
    phantom.write_phantom(copy, seed=0, workers=1, counterfactuals=2, **SMALL)
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in before}
    assert len(_files(copy, (COUNTERFACTUAL_DIR,))) == 2 * 2 * 3


@pytest.mark.parametrize("size, total", [("adni", 30_520), ("adni_quarter", 7_640)])
def test_release_sizes_have_the_real_counts_per_split_and_class(size, total):
    sizes = phantom.SIZES[size]
    jobs = phantom.plan("unused", sizes["train"], sizes["test"], 20, seed=0)
    counts = phantom._counts(jobs)
    if size == "adni":
        assert counts == {"train": {"AD": 10_400, "NC": 11_120},
                          "test": {"AD": 4_460, "NC": 4_540}}
    assert sum(n for cell in counts.values() for n in cell.values()) == total
    assert len({job.pid for job in jobs}) == len(jobs)  # no patient in two splits


def test_per_class_counts_write_and_check(tmp_path):
    counts = phantom.write_phantom(tmp_path / "set", {"AD": 1, "NC": 2}, {"AD": 1, "NC": 1}, 2,
                                   workers=1)
    assert counts == {"train": {"AD": 2, "NC": 4}, "test": {"AD": 2, "NC": 2}}
    assert inspect_folder(tmp_path / "set")["splits"]["train"]["NC"]["images"] == 4
    with pytest.raises(UserError, match=r"test_patients\[NC\]"):
        phantom.write_phantom(tmp_path / "bad", 1, {"AD": 1, "NC": 0}, 2, workers=1)
