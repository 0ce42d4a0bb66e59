"""Histogram thresholds of the lesion score: Otsu's and Kittler-Illingworth's minimum-error threshold.

Otsu (1979) maximises the between-class variance, which assumes two classes of equal spread; a
small lesion beside a large, broad skin class then gets a threshold inside the skin's own tail.
Kittler & Illingworth (1986) fit two Gaussians of their own share and spread and cut where the
classification error is smallest, but on their own they can settle on a tiny extreme class, so
:mod:`backend.followup.segmentation` searches it only between Otsu's threshold and the mean of the
class above it.
"""

from __future__ import annotations

import numpy as np


def _histogram_range(values: np.ndarray) -> tuple[float, float]:
    """The histogram's range: the values' own, at least 1e-3 wide (a uniform image has one value)."""
    low = float(values.min())
    return low, max(float(values.max()) + 1e-6, low + 1e-3)


def otsu_threshold(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold of 1-D float values and the between-class share of their variance (0-1).

    Args:
        values: Scores of the valid pixels.
    """
    values = np.asarray(values, dtype=np.float64)  # float32 edges cannot split a narrow range 256 ways
    hist, edges = np.histogram(values, bins=256, range=_histogram_range(values))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1e-12)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2 / weight0[-1] ** 2
    best = int(np.argmax(between[:-1]))
    total = float(values.var())
    return float(edges[best + 1]), float(between[best] / total) if total > 0 else 0.0


def minimum_error_threshold(values: np.ndarray, low: float, high: float, min_share: float = 0.01) -> float | None:
    """Kittler & Illingworth's minimum-error threshold of 1-D values within ``[low, high]`` (None if none fits).

    It fits two Gaussians of their own proportion and spread, so a small lesion beside a large,
    broad skin class is cut where the two distributions cross, where Otsu's method (equal spreads
    assumed) would cut into the skin's own tail.

    Args:
        values: Scores of the valid pixels.
        low: Lowest threshold considered.
        high: Highest threshold considered.
        min_share: Smallest share of the pixels each class must hold.
    """
    values = np.asarray(values, dtype=np.float64)  # float32 edges cannot split a narrow range 256 ways
    hist, edges = np.histogram(values, bins=256, range=_histogram_range(values))
    p = hist.astype(np.float64) / max(1, hist.sum())
    x = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    w1 = 1.0 - w0
    m0 = np.cumsum(p * x)
    s0 = np.cumsum(p * x * x)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    var0 = s0 / np.maximum(w0, 1e-12) - mean0**2
    var1 = (s0[-1] - s0) / np.maximum(w1, 1e-12) - mean1**2
    floor = (edges[1] - edges[0]) ** 2
    ok = (w0 >= min_share) & (w1 >= min_share) & (edges[1:] >= low) & (edges[1:] <= high)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (w0 * np.log(np.maximum(var0, floor)) + w1 * np.log(np.maximum(var1, floor))
                - 2 * (w0 * np.log(np.maximum(w0, 1e-12)) + w1 * np.log(np.maximum(w1, 1e-12))))
    cost = np.where(ok, cost, np.inf)
    if not np.isfinite(cost).any():
        return None
    best = int(np.argmin(cost))
    return float(edges[best + 1])
