"""Percentile bootstrap confidence intervals for any metric of one evaluation split.

Rows are resampled with replacement; with ``groups`` (e.g. patient or lesion ids) whole groups
are resampled instead, because images of one patient are not independent and row resampling
would give intervals that are too narrow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd


class BootstrapCI(NamedTuple):
    """A point estimate with its percentile-bootstrap interval (NaN where not estimable)."""

    point: float
    lo: float
    hi: float


def _safe_metric(metric_fn: Callable[..., Any], arrays: list[np.ndarray]) -> float:
    """The metric as a float; NaN when it is undefined on this (re)sample (e.g. one-class AUROC)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(metric_fn(*arrays))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return math.nan
    return value


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Any = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``.

    Args:
        metric_fn: Called with the arrays (same row order, resampled along the first axis) and
            returning a number, e.g. ``lambda y, p: roc_auc_score(y, p)``. A resample on which it
            is undefined (NaN, or it raises ``ValueError``) is skipped.
        *arrays: One or more arrays with the same first dimension.
        n_boot: Number of bootstrap resamples.
        alpha: ``1 - alpha`` is the interval's coverage.
        seed: Seed of the resampling generator (same seed, same interval).
        groups: Optional group id per row; whole groups are resampled with replacement. A row
            with a missing id (None/NaN) is a group of its own.

    Returns:
        ``(point, lo, hi)``; ``lo``/``hi`` are NaN when no resample gave a defined value.

    Raises:
        ValueError: When no array is given, lengths differ, or ``n_boot``/``alpha`` are out of range.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    data = [np.asarray(a) for a in arrays]
    n = data[0].shape[0]
    if any(a.shape[0] != n for a in data):
        raise ValueError(f"arrays differ in length: {[a.shape[0] for a in data]}")
    point = _safe_metric(metric_fn, data)
    rng = np.random.default_rng(seed)

    if groups is None:
        members = None
    else:
        group_ids = np.asarray(groups).reshape(-1)
        if group_ids.shape[0] != n:
            raise ValueError(f"groups has {group_ids.shape[0]} values for {n} rows")
        missing = pd.isna(group_ids)
        keys = np.where(missing, [f"<no group> row {i}" for i in range(n)], group_ids.astype(str))
        _, inverse = np.unique(keys, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])

    stats = np.empty(n_boot)
    for b in range(n_boot):
        if members is None:
            idx = rng.integers(0, n, n)
        else:
            picked = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[g] for g in picked])
        stats[b] = _safe_metric(metric_fn, [a[idx] for a in data])
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return BootstrapCI(point, math.nan, math.nan)
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapCI(point, float(lo), float(hi))
