"""The field's counterfactual measures on images whose answer is known."""

import numpy as np
import pytest

from pipelines import counterfactual_axioms as axioms


def brain_slices(n=3, size=48, seed=0):
    """(n, size, size) uint8: a grey disk of brain with texture on black, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.5) ** 2
    images = np.where(disk, rng.integers(120, 160, (n, size, size)), 0).astype(np.uint8)
    return images, np.broadcast_to(disk, images.shape).copy()


def test_the_share_explained_is_0_for_the_source_and_1_for_the_truth_and_half_between():
    sources, brain = brain_slices()
    truths = sources.copy()
    truths[:, 18:28, 18:28] -= 40  # a true change: darker tissue
    half = sources.copy()
    half[:, 18:28, 18:28] -= 20
    assert axioms.share_explained(sources, sources, truths, brain) == pytest.approx([0, 0, 0])
    assert axioms.share_explained(truths, sources, truths, brain) == pytest.approx([1, 1, 1])
    assert axioms.share_explained(half, sources, truths, brain) == pytest.approx([0.5] * 3)
    assert axioms.magnitude_ratio(half, sources, truths, brain) == pytest.approx(0.5)
    assert axioms.change_correlation(half, sources, truths, brain) == pytest.approx([1, 1, 1])
    # nothing to explain where the truth is the source: not defined, not 0
    assert np.isnan(axioms.share_explained(half, sources, sources, brain)).all()


def test_the_correlation_is_low_for_a_change_in_the_wrong_place():
    sources, brain = brain_slices()
    truths, wrong = sources.copy(), sources.copy()
    truths[:, 18:28, 18:28] -= 40
    wrong[:, 30:36, 12:20] -= 40
    assert (axioms.change_correlation(wrong, sources, truths, brain) < 0.1).all()
    changed = (np.abs(truths.astype(int) - sources) > 20) & brain
    minimal = axioms.outside_change(truths, sources, changed, brain)
    assert minimal["outside"] == 0 and minimal["share_outside"] == 0
    assert axioms.outside_change(wrong, sources, changed, brain)["share_outside"] == 1


def test_the_csf_area_recovers_a_planted_change_per_patient():
    sources, brain = brain_slices(n=4)
    truths = sources.copy()
    sizes = [0, 4, 6, 8]  # a dark ventricle of size x size pixels planted per slice
    for i, k in enumerate(sizes):
        truths[i, 20:20 + k, 20:20 + k] = 20
    planted = np.array([k * k for k in sizes])
    assert (axioms.csf_area(truths, brain) - axioms.csf_area(sources, brain) == planted).all()
    # an edit that plants half the area: slope 0.5, correlation 1 over the patients
    edits = sources.copy()
    for i, k in enumerate(sizes):
        edits[i, 20:20 + k, 20:20 + k // 2] = 20
    record = axioms.csf_agreement(edits, sources, truths, brain, ["a", "b", "c", "d"])
    assert record["slope"] == pytest.approx(0.5, abs=0.02)
    assert record["correlation"] == pytest.approx(1.0, abs=0.01)
    assert record["per_patient"]["d"] == {"edit": 32, "truth": 64}
    two = axioms.csf_agreement(edits, sources, truths, brain, ["a", "a", "b", "b"])
    assert two["correlation"] is None and "3 patients" in two["not_defined"]


def test_the_flip_target_is_against_the_truth_at_the_edit_s_size_and_the_truth():
    assert axioms.flip_verdict(0.6, truth=0.7, truth_at_size=0.5)
    assert not axioms.flip_verdict(0.6, truth=0.7, truth_at_size=0.65)  # below its own size
    assert not axioms.flip_verdict(0.5, truth=0.9, truth_at_size=0.4)  # under 0.8 x the truth
