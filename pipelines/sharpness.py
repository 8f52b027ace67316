"""How sharp generated slices are, against real ones: radially averaged power spectra.

Blur is a loss of energy at high spatial frequencies, so it is measured as the ratio of generated
to real spectral energy in octave bands of frequency, (1/16, 1/8], (1/8, 1/4], (1/4, 1/2] and
(1/2, 1] of Nyquist: 1 means as much detail as the real slices, below 1 blurrier. Noise would
raise the high bands too, so the log-spectrum distance over all frequencies (the RMS difference
of log10 power) is reported beside them: a blurred or a noisy copy both move it away from 0.

Computed at the native slice size (what users see) and inside the brain: each slice is weighted
by a smooth window lying inside its brain (its mean under the window removed) before the FFT, so
neither the black background, the brain's outline nor its mean brightness counts as detail.
"""

from __future__ import annotations

import numpy as np

BANDS = ((1 / 16, 1 / 8), (1 / 8, 1 / 4), (1 / 4, 1 / 2), (1 / 2, 1.0))  # of Nyquist
BRAIN_THRESHOLD = 10  # 8-bit grey above this is brain (the background is black)
ERODE, TAPER = 8, 4.0  # pixels: the window stays inside the brain and fades out smoothly


def band_names() -> list[str]:
    return [f"({_frac(lo)}, {_frac(hi)}]" for lo, hi in BANDS]


def _frac(x: float) -> str:
    return "1" if x == 1 else f"1/{round(1 / x)}"


def brain_window(image: np.ndarray) -> np.ndarray:
    """A smooth 0..1 weight over the brain: the thresholded brain, eroded, with soft edges.

    A hard mask would add its own sharp outline to every spectrum, blurred or not; the taper
    keeps the outline out of the high bands so that what is measured is the anatomy inside.
    """
    from scipy import ndimage

    brain = ndimage.binary_fill_holes(image > BRAIN_THRESHOLD / 255.0)
    inner = ndimage.binary_erosion(brain, iterations=ERODE)
    return ndimage.gaussian_filter(inner.astype(np.float64), TAPER)


def radial_power(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 -> (frequency in units of Nyquist per radial bin, mean power per bin).

    Power is averaged over images and over the ring of FFT coefficients at each radius.
    """
    images = np.asarray(images, dtype=np.float64) / 255.0
    n, h, w = images.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    radius = np.sqrt(fx**2 + fy**2) / 0.5  # 1 = Nyquist along an axis
    bins = np.minimum((radius * (min(h, w) // 2)).round().astype(int), min(h, w) // 2)
    power = np.zeros(bins.max() + 1)
    for image in images:
        weight = brain_window(image)
        mean = (image * weight).sum() / max(weight.sum(), 1e-12)
        spectrum = np.abs(np.fft.fft2((image - mean) * weight)) ** 2
        power += np.bincount(bins.ravel(), weights=spectrum.ravel(), minlength=len(power))
    counts = np.bincount(bins.ravel(), minlength=len(power))
    freqs = np.arange(len(power)) / (min(h, w) // 2)
    return freqs, power / np.maximum(counts, 1) / n


def compare_spectra(generated: np.ndarray, real: np.ndarray) -> dict:
    """Band energy ratios (generated / real) and the log-spectrum distance, as plain floats."""
    freqs, p_gen = radial_power(generated)
    _, p_real = radial_power(real)
    ratios = {}
    for name, (lo, hi) in zip(band_names(), BANDS, strict=True):
        band = (freqs > lo) & (freqs <= hi)
        ratios[name] = float(p_gen[band].sum() / max(p_real[band].sum(), 1e-30))
    valid = (freqs > 0) & (freqs <= 1) & (p_real > 0) & (p_gen > 0)
    distance = float(np.sqrt(np.mean((np.log10(p_gen[valid]) - np.log10(p_real[valid])) ** 2)))
    return {"band_energy_ratio": ratios, "log_spectrum_distance": distance}


def plot_spectra(path, curves: dict) -> None:
    """One log-log plot of radial power: ``curves`` maps a legend name to (N, H, W) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, images in curves.items():
        freqs, power = radial_power(images)
        keep = (freqs > 0) & (freqs <= 1)
        ax.loglog(freqs[keep], power[keep], label=name,
                  linestyle="-" if name.startswith("real") else "--")
    for lo, _ in BANDS:
        ax.axvline(lo, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("spatial frequency (1 = Nyquist)")
    ax.set_ylabel("mean power inside the brain")
    ax.set_title("Radially averaged power spectrum, native 256x240")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
