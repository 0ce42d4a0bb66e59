"""The shared diagnosis and benign/malignant metric functions against independent sklearn calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

from backend.data.schema import DIAGNOSES, MALIGNANT_INDICES
from backend.metrics.classification import (
    balanced_accuracy,
    binary_auroc,
    class_auroc,
    class_f1,
    macro_auroc,
    malignant_probability,
    sensitivity_at_specificity,
    sensitivity_specificity,
)
from tests.metrics.synthetic import C, synthetic


def test_diagnosis_metrics_match_sklearn_and_skip_unknown_rows(rng):
    y, probs = synthetic(rng, n=200)
    y_unknown = y.astype(float)
    y_unknown[:30] = np.nan  # label-only rows
    y_unknown[30:40] = -1  # UNK rows
    known, pred = slice(40, None), probs.argmax(1)
    yk, pk = y[known], pred[known]
    assert balanced_accuracy(y_unknown, probs) == pytest.approx(balanced_accuracy_score(yk, pk), abs=1e-12)
    for k in range(C):
        assert class_f1(y_unknown, probs, k) == pytest.approx(f1_score(yk == k, pk == k), abs=1e-12)
        assert class_auroc(y_unknown, probs, k) == pytest.approx(roc_auc_score(yk == k, probs[known, k]), abs=1e-12)
    assert macro_auroc(y_unknown, probs) == pytest.approx(
        roc_auc_score(yk, probs[known], multi_class="ovr", average="macro"), abs=1e-12
    )


def test_absent_class_is_undefined_not_zero(rng):
    y, probs = synthetic(rng, n=120, classes=tuple(range(C - 1)))
    probs[:10, C - 1] = 10.0  # SCC predicted, never true
    assert math.isnan(class_f1(y, probs, C - 1)) and math.isnan(class_auroc(y, probs, C - 1))
    expected = np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(C - 1)])
    assert macro_auroc(y, probs) == pytest.approx(expected, abs=1e-12)
    with pytest.warns(UserWarning):  # sklearn warns about the predicted-but-absent class
        assert balanced_accuracy(y, probs) == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert math.isnan(balanced_accuracy(np.full(3, -1), probs[:3])) and math.isnan(macro_auroc([], np.ones((0, C))))


def test_binary_metrics_match_sklearn_and_skip_unknown_rows(rng):
    y = rng.integers(0, 2, 150).astype(float)
    score = np.clip(y * 0.3 + rng.uniform(size=150), 0, 1)
    y_unknown = y.copy()
    y_unknown[:20] = np.nan
    y_unknown[20:25] = -1
    yk, sk = y[25:].astype(int), score[25:]
    assert binary_auroc(y_unknown, score) == pytest.approx(roc_auc_score(yk, sk), abs=1e-12)
    tn, fp, fn, tp = confusion_matrix(yk, sk >= 0.6).ravel()
    assert sensitivity_specificity(y_unknown, score, 0.6) == pytest.approx((tp / (tp + fn), tn / (tn + fp)))
    fpr, tpr, _ = roc_curve(yk, sk)
    assert sensitivity_at_specificity(y_unknown, score, 0.8) == pytest.approx(tpr[fpr <= 0.2].max())
    assert math.isnan(binary_auroc([1, 1, np.nan], [0.1, 0.2, 0.3]))
    assert all(math.isnan(v) for v in sensitivity_specificity([], [], 0.5))


def test_sensitivity_at_specificity_perfect_and_undefined():
    assert sensitivity_at_specificity(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert math.isnan(sensitivity_at_specificity(np.array([1, 1]), np.array([0.1, 0.2])))


def test_malignant_probability_sums_mel_bcc_scc_in_any_column_order(rng):
    _, probs = synthetic(rng, n=10)
    assert (DIAGNOSES.index("MEL"), DIAGNOSES.index("BCC"), DIAGNOSES.index("SCC")) == MALIGNANT_INDICES
    np.testing.assert_allclose(malignant_probability(probs), probs[:, [0, 2, 7]].sum(1))
    nine = np.column_stack([probs, np.zeros(10)])
    np.testing.assert_allclose(malignant_probability(nine, (*DIAGNOSES, "UNK")), probs[:, [0, 2, 7]].sum(1))
    reordered = probs[:, ::-1]
    np.testing.assert_allclose(malignant_probability(reordered, DIAGNOSES[::-1]), probs[:, [0, 2, 7]].sum(1))
