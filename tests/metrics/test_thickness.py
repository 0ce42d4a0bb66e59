"""The shared Breslow-thickness metric functions on hand-computed interval labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.metrics.thickness import (
    thick_vs_thin,
    thickness_band_accuracy,
    thickness_interval_accuracy,
    thickness_mae,
    thickness_mape,
    thickness_rmse,
    thickness_split_accuracy,
)

#            exact 1.0 exact 2.0 in situ  [0,0.76] [0.76,1.5] [1.5,inf) unlabelled straddle [0.5,1] [1.5,open]
LO = np.array([1.0, 2.0, 0.0, 0.0, 0.76, 1.5, np.nan, 0.5, 1.5])
HI = np.array([1.0, 2.0, 0.0, 0.76, 1.5, np.inf, np.nan, 1.0, np.nan])
PRED = np.array([1.5, 1.0, 0.2, 0.5, 2.0, 3.0, 9.9, 0.7, 0.4])


def test_exact_label_errors():
    assert thickness_mae(PRED, LO, HI) == pytest.approx((0.5 + 1.0 + 0.2) / 3)
    assert thickness_rmse(PRED, LO, HI) == pytest.approx(math.sqrt((0.25 + 1.0 + 0.04) / 3))
    assert thickness_mape(PRED, LO, HI) == pytest.approx((0.5 / 1.0 + 1.0 / 2.0) / 2)  # in situ left out


def test_interval_and_split():
    # 0.5 in [0,0.76] yes, 2.0 in [0.76,1.5] no, 3.0 in [1.5,inf) yes, 0.7 in [0.5,1] yes, 0.4 in [1.5,open) no
    assert thickness_interval_accuracy(PRED, LO, HI) == pytest.approx(3 / 5)
    truth, score = thick_vs_thin(PRED, LO, HI)
    # thick: rows 0, 1, 4, 5, 8; thin: rows 2, 3; row 7 straddles 0.76; row 6 unlabelled
    assert truth.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert score.tolist() == [1.5, 1.0, 0.2, 0.5, 2.0, 3.0, 0.4]
    assert thickness_split_accuracy(PRED, LO, HI) == pytest.approx(6 / 7)  # 0.4 called thin
    assert thickness_split_accuracy(PRED, LO, HI, split_mm=1.2) == pytest.approx(4 / 7)  # [0.76, 1.5] straddles


def test_band_accuracy_counts_exact_labels_by_reporting_band():
    pred = np.array([0.5, 1.5, 0.9, 3.0])
    lo = np.array([0.6, 1.9, 0.76, np.nan])
    hi = np.array([0.6, 1.9, 1.5, np.nan])
    # 0.5 and 0.6 share "<0.8 mm"; 1.5 and 1.9 share "1-2 mm"; 0.9 lies in the band [0.76, 1.5].
    assert thickness_band_accuracy(pred, lo, hi) == pytest.approx(1.0)
    assert thickness_band_accuracy(np.array([1.0, 0.5, 2.0]), lo[:3], hi[:3]) == pytest.approx(0.0)
    assert thickness_band_accuracy(np.array([-0.1]), np.array([0.0]), np.array([0.0])) == 1.0  # in situ


def test_no_label_is_nan_and_lengths_must_match():
    nan = np.full(2, np.nan)
    for fn in (thickness_mae, thickness_rmse, thickness_mape, thickness_interval_accuracy, thickness_band_accuracy,
               thickness_split_accuracy):
        assert math.isnan(fn([1.0, 2.0], nan, nan)), fn.__name__
    with pytest.raises(ValueError, match="differ in length"):
        thickness_mae([1.0], [1.0, 2.0], [1.0, 2.0])
