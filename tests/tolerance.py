"""What a comparison across batch sizes, thread counts, processes or code paths may assert.

Float kernels promise equal bytes only for the same computation (same batch, path, thread count
and instruction set): another batch size or thread count may pick another convolution algorithm,
blocking or summation order. Such outputs are compared here within a stated tolerance; equal
bytes stay asserted where the computation is the same.
"""

from __future__ import annotations

import numpy as np

ONE_ROUNDING = 1  # grey levels: a float value computed in another order, rounded to 8 bits once
FEW_STEPS = 2  # grey levels: a sampler's few steps may carry such a difference to a second level
SHARE_MOVED = 0.01  # of the pixels: only values next to a rounding boundary may move at all
FEATURE_RTOL = 1e-4  # float features: relative to the largest feature (fp32 sums of ~1e3 terms)


def assert_grey_levels_close(got, want, levels: int = ONE_ROUNDING,
                             share: float = SHARE_MOVED) -> None:
    """8-bit images equal but for rounding: no pixel more than ``levels`` grey levels apart and
    at most ``share`` of them moved at all."""
    got, want = np.asarray(got).astype(np.int64), np.asarray(want).astype(np.int64)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got - want)
    moved = float((diff > 0).mean())
    assert diff.max() <= levels and moved <= share, \
        f"max {diff.max()} grey levels apart (allowed {levels}), {moved:.4f} of the pixels " \
        f"moved (allowed {share})"


def assert_features_close(got, want, rtol: float = FEATURE_RTOL) -> None:
    """Float arrays equal up to ``rtol`` of the largest magnitude in ``want``."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-12)
    error = float(np.abs(got - want).max()) / scale
    assert error <= rtol, f"relative error {error:.2e} (allowed {rtol:.0e})"
