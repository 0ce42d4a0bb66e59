"""Temperature scaling (plain and bias-corrected), ECE (checked against torchmetrics), reliability-diagram bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from backend.metrics.calibration import (
    apply_temperature,
    balanced_decision_scores,
    calibrated_probs,
    expected_calibration_error,
    fit_bias_corrected_temperature,
    fit_calibration,
    fit_temperature,
    reliability_diagram,
)

C = 8


def calibrated_logits(rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution: labels are sampled from it."""
    logits = rng.normal(0, 1.5, (n, C))
    probs = apply_temperature(logits, 1.0)
    labels = (probs.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return logits, labels


def test_overconfident_logits_get_t_above_one_and_lower_ece(rng):
    logits, labels = calibrated_logits(rng)
    sharp = logits * 3.0  # the same ranking, three times too confident
    t = fit_temperature(sharp, labels)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(apply_temperature(sharp, 1.0), labels)
    after = expected_calibration_error(apply_temperature(sharp, t), labels)
    assert before > 0.1 and after < before / 3
    # temperature never changes the predicted class
    np.testing.assert_array_equal(apply_temperature(sharp, t).argmax(1), sharp.argmax(1))


def test_calibrated_logits_give_t_near_one(rng):
    logits, labels = calibrated_logits(rng)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_underconfident_logits_get_t_below_one_and_unknown_rows_ignored(rng):
    logits, labels = calibrated_logits(rng)
    labels_with_unknown = labels.copy()
    labels_with_unknown[:500] = -1
    t_masked = fit_temperature(torch.tensor(logits / 2.0), labels_with_unknown)
    t_subset = fit_temperature(logits[500:] / 2.0, labels[500:])
    assert t_masked == pytest.approx(t_subset, rel=1e-6)
    assert t_masked == pytest.approx(0.5, rel=0.15)
    with pytest.raises(ValueError, match="no row with a label"):
        fit_temperature(logits[:3], [-1, -1, -1])


def test_bias_corrected_scaling_recovers_temperature_and_class_frequencies(rng):
    """A class-weighted network: its logits lack the class priors; BCTS puts them back, one T cannot."""
    logits, _ = calibrated_logits(rng, n=20000)
    prior = np.array([0.55, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01])
    truth = apply_temperature(logits + np.log(prior), 1.0)  # the real posterior
    labels = (truth.cumsum(axis=1) > rng.uniform(size=(len(logits), 1))).argmax(axis=1)
    balanced = logits * 2.0  # what the network outputs: no prior, twice too confident
    t, offsets = fit_bias_corrected_temperature(balanced, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    expected = np.log(prior) - np.log(prior).mean()
    np.testing.assert_allclose(offsets, expected, atol=0.15)
    assert abs(offsets.sum()) < 1e-9
    # Calibrated where it matters: each class's mean probability matches its frequency (one T cannot).
    probs_t = apply_temperature(balanced, fit_temperature(balanced, labels))
    freq = np.bincount(labels, minlength=C) / len(labels)
    gap_bcts = np.abs(calibrated_probs(balanced, t, offsets).mean(0) - freq).max()
    assert gap_bcts < 0.01 < np.abs(probs_t.mean(0) - freq).max()
    # The class-balanced decision undoes the offsets: it is the network's own argmax.
    probs = calibrated_probs(balanced, t, offsets)
    np.testing.assert_array_equal(balanced_decision_scores(probs, offsets).argmax(1), balanced.argmax(1))
    assert (probs.argmax(1) != balanced.argmax(1)).any()  # while the most probable class moves to common ones
    np.testing.assert_array_equal(balanced_decision_scores(probs), probs)
    with pytest.raises(ValueError, match="3 calibration offsets for 8 classes"):
        balanced_decision_scores(probs, [0.0, 0.0, 0.0])


def test_fit_calibration_by_name(rng):
    logits, labels = calibrated_logits(rng, n=500)
    t, offsets = fit_calibration(logits, labels, "temperature")
    assert offsets is None and t == pytest.approx(fit_temperature(logits, labels))
    t, offsets = fit_calibration(logits, labels, "bias_corrected")
    assert offsets.shape == (C,) and t > 0
    with pytest.raises(ValueError, match="unknown calibration method 'platt'"):
        fit_calibration(logits, labels, "platt")
    with pytest.raises(ValueError, match="no row with a label"):
        fit_bias_corrected_temperature(logits[:2], [-1, -1])


def test_ece_matches_torchmetrics(rng):
    logits, labels = calibrated_logits(rng, n=1000)
    probs = apply_temperature(logits * 2.0, 1.0)
    reference = MulticlassCalibrationError(num_classes=C, n_bins=15, norm="l1")
    expected = reference(torch.tensor(probs, dtype=torch.float64), torch.tensor(labels)).item()
    # torchmetrics casts confidences to float32, hence the tolerance
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_hand_computed():
    probs = np.array(
        [
            [0.95, 0.05],  # bin [0.9, 1.0], correct
            [0.92, 0.08],  # bin [0.9, 1.0], wrong
            [0.35, 0.65],  # bin [0.6, 0.7), correct
            [1.00, 0.00],  # confidence 1 -> last bin, correct
            [0.30, 0.70],  # label unknown: ignored
        ]
    )
    labels = np.array([0, 1, 1, 0, -1])
    bins = reliability_diagram(probs, labels, n_bins=10)
    assert len(bins) == 10 and bins["count"].sum() == 4
    last = bins.iloc[9]
    assert last["count"] == 3
    assert last["confidence"] == pytest.approx((0.95 + 0.92 + 1.0) / 3)
    assert last["accuracy"] == pytest.approx(2 / 3)
    six = bins.iloc[6]
    assert six["count"] == 1 and six["confidence"] == pytest.approx(0.65) and six["accuracy"] == 1.0
    assert np.isnan(bins.iloc[0]["confidence"])
    ece = 3 / 4 * abs(2 / 3 - (0.95 + 0.92 + 1.0) / 3) + 1 / 4 * abs(1.0 - 0.65)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(ece)
    assert np.isnan(expected_calibration_error(probs[:1], [-1], n_bins=10))
