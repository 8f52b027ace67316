"""The blur measure: real slices score 1, a blurred copy loses its high bands, noise is caught."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipelines.data import load_split
from pipelines.sharpness import band_names, compare_spectra, radial_power
from pipelines.slices import NATIVE_SIZE, to_native


@pytest.fixture(scope="module")
def native_slices(tiny_data):
    slices = load_split(tiny_data, "train", max(NATIVE_SIZE), progress=False)
    return np.stack([to_native(p[0].numpy(), NATIVE_SIZE) for p in slices.pixels])


def blurred(images, radius):
    return np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(radius)))
                     for i in images])


def noisy(images, sigma, seed=0):
    rng = np.random.default_rng(seed)
    out = images.astype(float) + rng.normal(0, sigma, images.shape) * (images > 10)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def test_real_slices_score_one_in_every_band(native_slices):
    assert native_slices.shape[1:] == (240, 256)
    result = compare_spectra(native_slices, native_slices)
    assert all(r == pytest.approx(1.0) for r in result["band_energy_ratio"].values())
    assert result["log_spectrum_distance"] == pytest.approx(0.0, abs=1e-12)
    half = len(native_slices) // 2  # other slices of the same kind: near 1, near 0
    other = compare_spectra(native_slices[:half], native_slices[half:])
    assert all(0.6 < r < 1.6 for r in other["band_energy_ratio"].values())


def test_blur_loses_the_high_bands_and_noise_fails_the_distance(native_slices):
    bands = band_names()
    soft = compare_spectra(blurred(native_slices, 2), native_slices)
    ratios = soft["band_energy_ratio"]
    assert ratios[bands[2]] < 0.1 and ratios[bands[3]] < 0.05  # (1/4, 1/2] and (1/2, 1]
    assert ratios[bands[0]] > ratios[bands[2]]  # low frequencies survive a blur
    grainy = compare_spectra(noisy(native_slices, 20), native_slices)
    assert grainy["band_energy_ratio"][bands[3]] > 1.5  # noise looks like "detail" in a band...
    half = len(native_slices) // 2
    baseline = compare_spectra(native_slices[:half], native_slices[half:])
    # ... but not in the distance, which it moves as far as a blur does
    assert grainy["log_spectrum_distance"] > 3 * baseline["log_spectrum_distance"]
    assert soft["log_spectrum_distance"] > 3 * baseline["log_spectrum_distance"]


def test_radial_frequencies_reach_nyquist():
    freqs, power = radial_power(np.zeros((1, 240, 256), dtype=np.uint8))
    assert freqs[0] == 0 and freqs[-1] == pytest.approx(1.0) and np.all(power == 0)
