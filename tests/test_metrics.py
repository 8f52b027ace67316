"""pipelines.metrics on tiny synthetic features and 32 px toy images (disks and rings)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from pipelines import metrics


def blobs(n, centre, dim=8, seed=0):
    return np.random.default_rng(seed).normal(centre, 1.0, size=(n, dim))


def shapes(n, size=32, seed=0):
    """(n, 1, size, size) float [0, 1]: disks and rings at random places, with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(0.15, 0.3) * size
        dist = np.hypot(yy - cy, xx - cx)
        shape = dist < radius if i % 2 else np.abs(dist - radius) < 2
        out[i, 0] = 0.8 * shape + rng.normal(0, 0.03, (size, size))
    return torch.from_numpy(out.clip(0, 1))


# ----------------------------------------------------------------------------- features


def test_frechet_distance_zero_for_identical_sets_and_matches_sqrtm():
    a, b = blobs(300, 0.0), blobs(300, 0.5, seed=1)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    reference = (((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.trace(covmean))
    assert metrics.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_grows_with_a_mean_shift():
    a = blobs(300, 0.0)
    # shifting every one of 8 dimensions by 3 adds 8 * 3^2 = 72 and leaves the covariance as is
    assert metrics.frechet_distance(a, a + 3.0) == pytest.approx(72.0, rel=1e-6)
    assert metrics.frechet_distance(torch.from_numpy(a), a + 3.0) == pytest.approx(72.0, rel=1e-6)


def test_precision_recall_identical_disjoint_and_mode_collapse():
    real = np.concatenate([blobs(200, -5.0), blobs(200, 5.0, seed=1)])
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    precision, recall = metrics.precision_recall(real, blobs(400, 40.0, seed=2))
    assert precision == 0.0 and recall == 0.0
    # a generator that only makes one of the two modes: faithful but half the coverage
    precision, recall = metrics.precision_recall(real, blobs(200, 5.0, seed=3))
    assert precision > 0.9
    assert 0.4 < recall < 0.6


def test_knn_label_metrics_and_silhouette_separate_clusters_from_random_labels():
    feats = np.concatenate([blobs(100, -4.0), blobs(100, 4.0, seed=1)])
    labels = np.repeat([0, 1], 100)
    shuffled = np.random.default_rng(0).permutation(labels)
    assert metrics.knn_label_accuracy(feats, labels) == 1.0
    assert 0.3 < metrics.knn_label_accuracy(feats, shuffled) < 0.7
    assert metrics.silhouette(feats, labels) > 0.6
    assert abs(metrics.silhouette(feats, shuffled)) < 0.1
    queries = blobs(20, 4.0, seed=2)  # all from the label-1 cluster
    assert metrics.knn_label_agreement(queries, np.ones(20), feats, labels) == 1.0
    assert metrics.knn_label_agreement(queries, np.zeros(20), feats, labels) == 0.0


def test_knn_excludes_the_point_itself_and_optionally_its_group():
    feats = np.array([[0.0], [0.1], [10.0], [10.1]])
    # with itself as a neighbour every point would be right; without, the 1-NN is the twin
    assert metrics.knn_label_accuracy(feats, [0, 1, 0, 1], k=1) == 0.0
    # twins of one patient: right by their twin, wrong once the whole patient is left out
    assert metrics.knn_label_accuracy(feats, [0, 0, 1, 1], k=1) == 1.0
    assert metrics.knn_label_accuracy(feats, [0, 0, 1, 1], k=1, groups=["a", "a", "b", "b"]) == 0
    with pytest.raises(ValueError, match="neighbours"):
        metrics.knn_label_accuracy(feats, [0, 0, 1, 1], k=3, groups=["a", "a", "b", "b"])


def test_label_share_and_own_group_nearest_see_through_patients():
    feats = np.array([[0.0], [0.1], [10.0], [10.1], [20.0], [20.1]])
    labels, patients = [0, 0, 1, 1, 0, 1], ["a", "a", "b", "b", "c", "c"]
    # each slice's nearest other is its twin: the label share by twins, then with twins left out
    assert metrics.knn_label_share(feats, labels, k=1) == pytest.approx(4 / 6)
    # twins left out: a's slices find b (other label), b's 10.0 finds a's 0.1 and 10.1 finds c's
    # 20.0 (both other labels), c's slices find b's 10.1 (label 1): only c's label-1 slice agrees
    assert metrics.knn_label_share(feats, labels, k=1, groups=patients) == pytest.approx(1 / 6)
    share, chance = metrics.nearest_in_own_group(feats, patients)
    assert share == 1.0 and chance == pytest.approx(1 / 5)
    shuffled = ["a", "b", "c", "a", "b", "c"]
    assert metrics.nearest_in_own_group(feats, shuffled)[0] == 0.0
    # unequal patients (1, 2 and 3 slices): chance weighs each slice by its patient's others
    share, chance = metrics.nearest_in_own_group(feats, ["a", "b", "b", "c", "c", "c"])
    assert chance == pytest.approx((0 + 1 + 1 + 2 + 2 + 2) / 6 / 5)
    assert share == pytest.approx(2 / 6)  # only c's 20.0 and 20.1 find their own patient


def test_a_copy_of_a_patient_is_judged_as_that_patient_s_own_slices_are():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(30), 4)
    feats = np.repeat(rng.normal(0, 5, (30, 6)), 4, axis=0) + rng.normal(0, 0.1, (120, 6))
    labels = rng.integers(0, 2, 30)[patients]
    copies = metrics.knn_label_agreement(feats, labels, feats, labels, 8, ref_groups=patients)
    assert copies == metrics.knn_label_share(feats, labels, 8, groups=patients)
    assert metrics.knn_label_agreement(feats, labels, feats, labels, 8) > copies  # credit by copy


def test_precision_with_patient_groups_ignores_near_duplicate_slices():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 4))  # 60 patients, 5 near-identical slices each
    real = np.repeat(centres, 5, axis=0) + rng.normal(0, 0.01, (300, 4))
    fake = rng.normal(size=(300, 4))  # a perfect generator of new patients
    assert metrics.precision_recall(real, fake)[0] < 0.2
    assert metrics.precision_recall(real, fake, real_groups=np.repeat(np.arange(60), 5))[0] > 0.6


# ----------------------------------------------------------------------------- images


def test_ssim_matrix_equals_torchmetrics():
    a, b = shapes(4, seed=0), shapes(6, seed=1)
    expected = torch.stack([
        structural_similarity_index_measure(a[i : i + 1].expand_as(b), b, data_range=1.0,
                                            reduction="none")
        for i in range(len(a))
    ])
    torch.testing.assert_close(metrics.ssim_matrix(a, b), expected, atol=1e-5, rtol=0)
    # small blocks must give the same matrix
    torch.testing.assert_close(metrics.ssim_matrix(a, b, max_elements=1), expected,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("candidates", [None, 5])
def test_nearest_ssim_finds_a_copied_reference(candidates):
    references = shapes(40, seed=0)
    queries = torch.cat([references[[7, 23]], shapes(3, seed=5)])
    values, index = metrics.nearest_ssim(queries, references, candidates=candidates)
    torch.testing.assert_close(values[:2], torch.ones(2), atol=1e-5, rtol=0)
    assert index[:2].tolist() == [7, 23]
    assert (values[2:] < 0.99).all()
    exact = metrics.ssim_matrix(queries, references)
    torch.testing.assert_close(exact[torch.arange(5), index], values)


def test_nearest_ssim_accepts_uint8():
    references = (shapes(10) * 255).round().to(torch.uint8)
    values, index = metrics.nearest_ssim(references[3:4], references)
    assert index.item() == 3 and values.item() == pytest.approx(1.0, abs=1e-5)


def test_diversity_of_identical_images_is_one_and_of_noise_is_low():
    same = shapes(1).expand(10, -1, -1, -1)
    name, value = metrics.diversity(same)
    assert name == "ssim" and value == pytest.approx(1.0, abs=1e-5)
    noise = torch.rand(30, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert metrics.diversity(noise)[1] < 0.05
    toy = metrics.diversity(shapes(30))[1]
    assert metrics.diversity(noise)[1] < toy < 1.0


def test_diversity_switches_to_ms_ssim_for_large_images():
    assert not metrics.msssim_fits(128) and metrics.msssim_fits(176)
    name, value = metrics.diversity(shapes(1, size=176).expand(3, -1, -1, -1), max_pairs=2)
    assert name == "ms_ssim" and value == pytest.approx(1.0, abs=1e-4)


def test_random_pairs_are_distinct_and_capped():
    first, second = metrics._random_pairs(50, max_pairs=100, seed=0)
    assert len(first) == 100 and (first != second).all()
    first, second = metrics._random_pairs(5, max_pairs=100, seed=0)
    assert len(first) == 10  # all unordered pairs


def test_images_in_minus_one_to_one_are_rejected():
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        metrics.diversity(shapes(4) * 2 - 1)
