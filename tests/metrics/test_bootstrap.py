"""Percentile bootstrap intervals: coverage, narrowing with n, NaN-safe metrics, grouped resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from backend.metrics.bootstrap import bootstrap_ci


def test_bootstrap_ci_contains_point_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, 50)
    large = rng.normal(1.0, 1.0, 2000)
    p1, lo1, hi1 = bootstrap_ci(np.mean, small, n_boot=300)
    p2, lo2, hi2 = bootstrap_ci(np.mean, large, n_boot=300)
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert (hi2 - lo2) < 0.5 * (hi1 - lo1)
    # percentile CI of a mean ~ +-1.96 sd/sqrt(n)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.25)
    assert bootstrap_ci(np.mean, small, n_boot=300) == (p1, lo1, hi1)  # seeded


def test_bootstrap_ci_auroc_is_nan_safe_and_groups_widen():
    rng = np.random.default_rng(2)
    y = np.array([1] + [0] * 29)  # one positive: many resamples have no positive -> skipped
    score = rng.uniform(size=30)
    point, lo, hi = bootstrap_ci(roc_auc_score, y, score, n_boot=200)
    assert point == pytest.approx(roc_auc_score(y, score)) and lo <= hi
    assert bootstrap_ci(roc_auc_score, np.zeros(5), score[:5], n_boot=20)[1:] == pytest.approx(
        (math.nan, math.nan), nan_ok=True
    )
    # 20 patients x 10 near-identical images: patient-level resampling gives a much wider CI
    patient_effect = np.repeat(rng.normal(0, 1, 20), 10)
    values = patient_effect + rng.normal(0, 0.05, 200)
    groups = np.repeat(np.arange(20), 10)
    _, lo_r, hi_r = bootstrap_ci(np.mean, values, n_boot=300)
    _, lo_g, hi_g = bootstrap_ci(np.mean, values, n_boot=300, groups=groups)
    assert (hi_g - lo_g) > 2 * (hi_r - lo_r)


def test_bootstrap_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(lambda a, b: 0.0, np.zeros(3), np.zeros(4))
