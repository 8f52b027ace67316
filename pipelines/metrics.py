"""Evaluation metrics for generated slices: pure functions of features, labels and images.

Why these: Inception-FID needs ImageNet weights that cannot be installed here, so the distances
are computed on in-domain features (the judge's, ``pipelines.judge``). Following medical-synthesis
practice, a model is scored on fidelity (Frechet distance, precision), coverage (recall),
diversity (mean pairwise SSIM / MS-SSIM, to compare with real pairs), memorisation (each
generated image's most similar training image) and whether the labels took (k-NN agreement).

Conventions: features are (N, D) arrays (numpy or torch); images are (N, 1, H, W) tensors, float
in [0, 1] (uint8 0..255 is accepted and scaled). Image functions return torch tensors, feature
functions return Python floats.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

SSIM_SIGMA = 1.5  # Wang et al. 2004; the torchmetrics defaults, so both SSIM paths agree
SSIM_K1, SSIM_K2 = 0.01, 0.03
MSSSIM_SCALES = 5  # torchmetrics' default betas: 5 scales, each halving the image


# ----------------------------------------------------------------------------- features


def _as_float64(feats) -> np.ndarray:
    feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else feats
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {feats.shape}")
    return feats


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance of Gaussians fitted to two feature sets (FID: Heusel et al. 2017).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)``. The trace term is computed as
    the sum of square roots of the eigenvalues of ``S_a^1/2 S_b S_a^1/2`` (symmetric, same
    spectrum as ``S_a S_b``), which stays real and stable where ``scipy.linalg.sqrtm`` of the
    non-symmetric product can return complex noise. Identical sets give ~0.
    """
    a, b = _as_float64(feats_a), _as_float64(feats_b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least 2 samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    half_a = _sqrt_psd(cov_a)
    cross = np.linalg.eigvalsh(half_a @ cov_b @ half_a)
    tr_covmean = np.sqrt(np.clip(cross, 0.0, None)).sum()
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean
    return float(max(value, 0.0))


def _distances(query: torch.Tensor, ref: torch.Tensor, chunk: int = 1024):
    """Yield (start, (chunk, N_ref) Euclidean distances) over row chunks of ``query``."""
    for start in range(0, len(query), chunk):
        yield start, torch.cdist(query[start : start + chunk], ref)


def _group_codes(*groups) -> list[torch.Tensor]:
    """Integer codes of group ids (e.g. patient ids), one coding across all arrays given."""
    joined = np.concatenate([np.asarray(g) for g in groups])
    codes = torch.from_numpy(np.unique(joined, return_inverse=True)[1])
    return list(codes.split([len(g) for g in groups]))


def _knn(query, ref, k: int, groups=None, query_groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) of the ``k`` nearest ``ref`` rows of each ``query`` row, nearest first.

    ``ref=None``: neighbours within ``query`` itself, never the row itself nor, with ``groups``
    (e.g. patient ids), a row of the same group. With ``ref``, ``groups`` (the ref rows') and
    ``query_groups`` (a group per query row): a query row never gets a ref row of its group.
    """
    query = torch.from_numpy(_as_float64(query))
    within = ref is None
    ref = query if within else torch.from_numpy(_as_float64(ref))
    if within:
        groups = np.arange(len(query)) if groups is None else groups
        query_groups = groups
    codes = None
    if groups is not None and query_groups is not None:
        query_codes, codes = _group_codes(query_groups, groups)
        available = len(ref) - torch.bincount(codes).max().item()
    else:
        available = len(ref)
    if k > available:
        raise ValueError(f"k={k} neighbours asked where only {available} are allowed")
    dists, index = [], []
    for start, d in _distances(query, ref):
        if codes is not None:
            d[query_codes[start : start + len(d), None] == codes[None, :]] = float("inf")
        top = d.topk(k, dim=1, largest=False)
        dists.append(top.values)
        index.append(top.indices)
    return torch.cat(dists), torch.cat(index)


def _inside(query, ref, radii: torch.Tensor) -> torch.Tensor:
    """(N_query,) bool: each ``query`` row inside at least one ball (ref row, its radius)."""
    query = torch.from_numpy(_as_float64(query))
    ref = torch.from_numpy(_as_float64(ref))
    return torch.cat([(d <= radii[None, :]).any(dim=1) for _, d in _distances(query, ref)])


def _coverage(query, ref, radii: torch.Tensor) -> float:
    """Share of ``query`` rows inside at least one ball (ref row, its radius)."""
    return float(_inside(query, ref, radii).double().mean())


def recall_per_sample(real_feats, fake_feats, k: int = 3, fake_groups=None) -> np.ndarray:
    """(N_real,) bool: each real sample inside the fake manifold, the terms whose mean is
    :func:`precision_recall`'s recall; a subset's mean is that subset's recall (e.g. per level).

    ``fake_groups``: patient ids when the "fake" set is a real reference set (see
    :func:`precision_recall` on why a radius skips the same patient's slices)."""
    fake_radii = _knn(fake_feats, None, k, groups=fake_groups)[0][:, -1]
    return _inside(real_feats, fake_feats, fake_radii).numpy()


def precision_recall(real_feats, fake_feats, k: int = 3, real_groups=None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), k-NN-radius manifolds.

    Each set's manifold is the union of balls around its samples, radius = distance to the k-th
    nearest neighbour in the same set. Precision: share of fake samples inside the real
    manifold (fidelity). Recall: share of real samples inside the fake manifold (coverage).

    ``real_groups`` (patient ids; not in the paper): a real radius then skips slices of the same
    patient. Adjacent slices of one patient are near-duplicates, so without it the real
    manifold shrinks to thin per-patient tubes that even held-out real slices miss.
    """
    real_radii = _knn(real_feats, None, k, groups=real_groups)[0][:, -1]
    fake_radii = _knn(fake_feats, None, k)[0][:, -1]
    precision = _coverage(fake_feats, real_feats, real_radii)
    recall = _coverage(real_feats, fake_feats, fake_radii)
    return precision, recall


def _labels(labels) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def _neighbour_labels(feats, labels, k: int, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, (N, k) labels of each sample's k nearest others, its own group left out)."""
    labels = _labels(labels)
    return labels, labels[_knn(feats, None, k, groups=groups)[1]]


def knn_label_accuracy(feats, labels, k: int = 10, groups=None) -> float:
    """Leave-one-out k-NN accuracy (Cover & Hart 1967): how separable the classes are.

    Majority vote of the ``k`` nearest other samples; a tied vote goes to the lowest label id.
    ``groups`` (patient ids) leaves the whole patient out, so a slice is not classified by its
    neighbouring slices (which share the label trivially).
    """
    labels, neighbour_labels = _neighbour_labels(feats, labels, k, groups)
    num_classes = int(labels.max()) + 1
    votes = F.one_hot(neighbour_labels, num_classes).sum(dim=1)  # (N, C)
    return float((votes.argmax(dim=1) == labels).double().mean())


def knn_label_share(feats, labels, k: int = 10, groups=None) -> float:
    """Mean share of each sample's ``k`` nearest others that carry its label.

    The real slices' own reference for :func:`knn_label_agreement`. ``groups`` (patient ids)
    leaves the sample's whole patient out: its neighbouring slices share its label trivially,
    and a generated slice has no patient among the real ones.
    """
    labels, neighbour_labels = _neighbour_labels(feats, labels, k, groups)
    return float((neighbour_labels == labels[:, None]).double().mean())


def agreement_chance_left_out(labels, groups=None) -> float:
    """:func:`knn_label_share` by chance: a sample's label share among neighbours drawn at random
    from the others, its own group left out (fewer of its own label than the class share)."""
    labels = np.asarray(labels)
    codes = _group_codes(np.arange(len(labels)) if groups is None else groups)[0].numpy()
    per_group = np.zeros((codes.max() + 1, labels.max() + 1))
    np.add.at(per_group, (codes, labels), 1)
    same = np.bincount(labels, minlength=per_group.shape[1])[labels] - per_group[codes, labels]
    return float(np.mean(same / (len(labels) - per_group.sum(1)[codes])))


def nearest_in_own_group(feats, groups) -> tuple[float, float]:
    """(share, chance): how often a sample's nearest other sample is of its own group.

    With patient ids as groups, near 1 means the space is organised by patient (anatomy,
    contrast, slice level) before anything else; chance is the share of a sample's others that
    are of its group, averaged over samples.
    """
    codes = _group_codes(groups)[0].numpy()
    nearest = _knn(feats, None, 1)[1][:, 0].numpy()
    sizes = np.bincount(codes)[codes]
    return float(np.mean(codes[nearest] == codes)), float(np.mean((sizes - 1) / (len(codes) - 1)))


def knn_label_agreement(query_feats, query_labels, ref_feats, ref_labels, k: int = 10,
                        ref_groups=None) -> float:
    """Mean share of each query's ``k`` nearest references that carry the query's label.

    k-NN label consistency (as in conditional-GAN evaluation, e.g. Shmelkov et al. 2018): with
    generated queries and real references, 1 means every generated AD slice lives among real AD
    slices; 0.5 means the label made no difference in a balanced set. ``ref_groups`` (patient
    ids) leaves out the patient of each query's nearest reference, as a real slice's own patient
    is left out (:func:`knn_label_share`): a query that copies one patient is judged, like that
    patient's own slices, by the patients around it.
    """
    nearest_group = None
    if ref_groups is not None:
        nearest_group = np.asarray(ref_groups)[_knn(query_feats, ref_feats, 1)[1][:, 0].numpy()]
    index = _knn(query_feats, ref_feats, k, groups=ref_groups, query_groups=nearest_group)[1]
    neighbour_labels = _labels(ref_labels)[index]  # (N, k)
    return float((neighbour_labels == _labels(query_labels)[:, None]).double().mean())


def silhouette(feats, labels, max_samples: int = 5000, seed: int = 0) -> float:
    """Mean silhouette coefficient of the label clusters (Rousseeuw 1987), via scikit-learn.

    In [-1, 1]: high when each sample is closer to its own class than to the other. Sets larger
    than ``max_samples`` are subsampled (the score is quadratic in N).
    """
    from sklearn.metrics import silhouette_score

    feats, labels = _as_float64(feats), np.asarray(labels)
    sample_size = min(len(feats), max_samples) if len(feats) > max_samples else None
    return float(silhouette_score(feats, labels, sample_size=sample_size, random_state=seed))


# ----------------------------------------------------------------------------- images


def as_unit_images(images) -> torch.Tensor:
    """(N, 1, H, W) float in [0, 1] from uint8 (0..255) or float [0, 1]; the one place we scale."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    images = images.float()
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(f"float images must lie in [0, 1] (got {images.min():.3f}.."
                         f"{images.max():.3f}); map [-1, 1] images with (x + 1) / 2")
    return images.clamp(0.0, 1.0)


def _gaussian_operator(n: int, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(n, n) matrix A with ``A @ x`` = x reflect-padded then filtered by a 1-D Gaussian.

    The torchmetrics SSIM window (size ``2 * int(3.5 sigma + 0.5) + 1``, reflect padding) as a
    linear map, so a separable 2-D filter of a batch is two large matrix products.
    """
    half = int(3.5 * sigma + 0.5)
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    basis = F.pad(torch.eye(n, dtype=torch.float64)[:, None, :], (half, half), mode="reflect")
    return F.conv1d(basis, kernel)[:, 0, :].T.float()  # column j = response to e_j


class _LocalStats:
    """Per-image local means and variances under the SSIM window; pairs only add the covariance."""

    def __init__(self, images: torch.Tensor):
        self.x = as_unit_images(images)[:, 0]  # (N, H, W)
        h, w = self.x.shape[-2:]
        self.a_h, self.a_w_t = _gaussian_operator(h), _gaussian_operator(w).T
        self.mu = self.filter(self.x)
        self.mu_sq = self.mu**2
        self.var = (self.filter(self.x**2) - self.mu_sq).clamp_min(0.0)

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        return self.a_h @ (x @ self.a_w_t)

    def take(self, index) -> tuple[torch.Tensor, ...]:
        return self.x[index], self.mu[index], self.mu_sq[index], self.var[index]


def _ssim_pairs(q: tuple, r: tuple, stats: _LocalStats) -> torch.Tensor:
    """SSIM (Wang et al. 2004, data range 1) of broadcast pairs of images given by their stats."""
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    x_q, mu_q, mu_sq_q, var_q = q
    x_r, mu_r, mu_sq_r, var_r = r
    # in place where possible: these (pairs, H, W) temporaries dominate the run time
    mu_qr = mu_q * mu_r
    contrast = stats.filter(x_q * x_r).sub_(mu_qr).mul_(2).add_(c2)  # 2 cov + c2
    numerator = mu_qr.mul_(2).add_(c1).mul_(contrast)
    denominator = (mu_sq_q + mu_sq_r).add_(c1).mul_(var_q + var_r + c2)
    return numerator.div_(denominator).mean(dim=(-2, -1))


def _check_same_size(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"image sizes differ: {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}")


def ssim_matrix(images_a, images_b, max_elements: int = 2**18) -> torch.Tensor:
    """(N_a, N_b) SSIM of every pair (Wang et al. 2004; Gaussian window, sigma 1.5, range 1).

    Equal to torchmetrics' ``structural_similarity_index_measure(a_i, b_j, data_range=1.0)``,
    computed in blocks of about ``max_elements`` pair-pixels: the window is applied as two matrix
    products and per-image means/variances are shared, so only the covariance is per pair.
    Small blocks stay in cache: 2**18 ran 2-5x faster than 2**23 on 2 CPU cores.
    """
    stats_a, stats_b = _LocalStats(images_a), _LocalStats(images_b)
    _check_same_size(stats_a.x, stats_b.x)
    n_a, n_b = len(stats_a.x), len(stats_b.x)
    pixels = stats_a.x[0].numel() if n_a else 1
    cols = max(1, min(n_b, max_elements // pixels))
    rows = max(1, max_elements // (pixels * cols))
    out = torch.empty(n_a, n_b)
    for i in range(0, n_a, rows):
        q = tuple(t[:, None] for t in stats_a.take(slice(i, i + rows)))
        for j in range(0, n_b, cols):
            out[i : i + rows, j : j + cols] = _ssim_pairs(q, stats_b.take(slice(j, j + cols)),
                                                          stats_a)
    return out


def _downsample(images, side: int = 32, chunk: int = 4096) -> torch.Tensor:
    """(N, side * side) images average-pooled to ``side`` px, converted ``chunk`` at a time so a
    large uint8 set is never held as floats at full size."""
    images = torch.as_tensor(images)
    parts = []
    for start in range(0, len(images), chunk):
        part = as_unit_images(images[start : start + chunk])
        if part.shape[-1] > side:
            part = F.adaptive_avg_pool2d(part, side)
        parts.append(part.flatten(1))
    return torch.cat(parts) if parts else torch.empty(0, side * side)


def _standardised(rows: torch.Tensor) -> torch.Tensor:
    """Each row shifted to mean 0 and scaled to standard deviation 1: L2 between such rows ranks
    pairs by correlation, blind to a global brightness or contrast change, as SSIM mostly is."""
    rows = rows - rows.mean(dim=1, keepdim=True)
    return rows / rows.std(dim=1, keepdim=True).clamp_min(1e-6)


def nearest_ssim(queries, references, candidates: int | None = None,
                 max_elements: int = 2**18) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the highest SSIM over ``references`` and that reference's index.

    A memorisation check (nearest-neighbour SSIM against the training set, as in Akbar et al.
    2025): values near 1 mean a generated image copies a training image.

    ``candidates=None``: exact, SSIM with every reference (:func:`ssim_matrix`; 400 x 1,600 at
    64 px takes well under a minute on 2 CPU cores, cost grows as H*W*(H+W)): O(Q * N) pairs.
    ``candidates=k``: SSIM only with each query's k nearest references by L2 distance on images
    average-pooled to 32 px and standardised (mean 0, std 1 per image; raw L2 missed the true
    nearest slice far more often on the stand-in, whose patients differ in contrast):
    O(Q * N) cheap distances plus O(Q * k) SSIM pairs, linear in the
    references, and only the shortlisted references are ever held as floats. A near-copy is
    also an L2 near neighbour, so memorisation is still found exactly, but the value for a novel
    image may be slightly below its true maximum (``pipelines.evaluation`` states the agreement
    with the exact search). Use it for large images or reference sets.
    """
    if candidates is None or candidates >= len(references):
        best = ssim_matrix(queries, references, max_elements).max(dim=1)
        return best.values, best.indices
    queries, references = torch.as_tensor(queries), torch.as_tensor(references)
    _check_same_size(queries, references)
    shortlist = _knn(_standardised(_downsample(queries)), _standardised(_downsample(references)),
                     candidates)[1]  # (Q, k)
    rows = max(1, max_elements // (queries[0].numel() * candidates))
    values = []
    for i in range(0, len(shortlist), rows):
        needed, local = shortlist[i : i + rows].unique(return_inverse=True)
        stats_q, stats_r = _LocalStats(queries[i : i + rows]), _LocalStats(references[needed])
        q = tuple(t[:, None] for t in stats_q.take(slice(None)))
        values.append(_ssim_pairs(q, stats_r.take(local), stats_q))
    best = torch.cat(values).max(dim=1)
    return best.values, shortlist.gather(1, best.indices[:, None])[:, 0]


def _random_pairs(n: int, max_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j), i != j: every unordered pair if there are at most ``max_pairs``."""
    if n < 2:
        raise ValueError("pairwise similarity needs at least 2 images")
    if n * (n - 1) // 2 <= max_pairs:
        return torch.triu_indices(n, n, offset=1)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (max_pairs,), generator=generator)
    second = (first + torch.randint(1, n, (max_pairs,), generator=generator)) % n
    return first, second


def _mean_pairwise(measure, images, max_pairs: int, seed: int, batch_size: int) -> float:
    images = as_unit_images(images)
    first, second = _random_pairs(len(images), max_pairs, seed)
    values = [
        measure(images[first[s : s + batch_size]], images[second[s : s + batch_size]],
                data_range=1.0, reduction="none")
        for s in range(0, len(first), batch_size)
    ]
    return float(torch.cat(values).mean())


def mean_pairwise_ssim(images, max_pairs: int = 1000, seed: int = 0,
                       batch_size: int = 256) -> float:
    """Mean SSIM (Wang et al. 2004) over random distinct pairs: lower = more diverse."""
    return _mean_pairwise(structural_similarity_index_measure, images, max_pairs, seed, batch_size)


def _msssim(preds, target, **kwargs):
    # relu normalisation: a negative contrast term at a coarse scale would otherwise give NaN
    return multiscale_structural_similarity_index_measure(preds, target, normalize="relu",
                                                          **kwargs)


def mean_pairwise_msssim(images, max_pairs: int = 1000, seed: int = 0,
                         batch_size: int = 64) -> float:
    """Mean MS-SSIM (Wang, Simoncelli & Bovik 2003) over random distinct pairs (Pinaya 2022)."""
    return _mean_pairwise(_msssim, images, max_pairs, seed, batch_size)


def msssim_fits(size: int, kernel_size: int = 11) -> bool:
    """Whether torchmetrics' 5-scale MS-SSIM accepts ``size`` px images (176 px and up)."""
    return size // (MSSSIM_SCALES - 1) ** 2 > kernel_size - 1


def diversity(images, max_pairs: int = 1000, seed: int = 0) -> tuple[str, float]:
    """("ms_ssim" or "ssim", mean pairwise value): MS-SSIM where the images are large enough.

    Compare a generated set's value with the same measure on real images: higher than real means
    too little diversity (mode collapse), 1 means identical images.
    """
    images = as_unit_images(images)
    if msssim_fits(min(images.shape[-2:])):
        return "ms_ssim", mean_pairwise_msssim(images, max_pairs, seed)
    return "ssim", mean_pairwise_ssim(images, max_pairs, seed)


def ssim_maps(images_a, images_b) -> torch.Tensor:
    """(N, H, W) local SSIM of each pair (a_i, b_i) (torchmetrics' full image, range 1).

    Averaged over a mask it scores part of an image, e.g. a counterfactual's identity outside
    the pixels its edit should change.
    """
    a, b = as_unit_images(images_a), as_unit_images(images_b)
    _check_same_size(a, b)
    _, full = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none",
                                                  return_full_image=True)
    return full[:, 0]
