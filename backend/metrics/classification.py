"""Diagnosis and benign/malignant metrics, each defined once as a function of whole-split arrays.

The model card (point estimates and bootstrap intervals), the evaluation report
(:func:`backend.metrics.scores.compute_metrics`), the subgroup tables and the traffic-light operating
points all call these functions, so a figure means the same wherever it is printed. The training
collection (:mod:`backend.metrics.collection`) follows the same definitions in torchmetrics.

Definitions:

* Diagnosis truth is the class index per row; ``-1`` (or NaN) marks an unknown diagnosis (UNK,
  label-only rows), left out of every diagnosis metric. Binary truth is 1/0 per row; any other
  value (NaN, ``-1``) is unknown and left out.
* A metric that the rows cannot define (no row, or no positive or no negative row) is NaN, never 0.
* Balanced accuracy is the mean recall over the classes present in the truth (sklearn's
  ``balanced_accuracy_score`` and the ISIC challenge's "balanced multiclass accuracy").
* The F1 and the one-vs-rest AUROC of a class are NaN when the class has no row in the truth; the
  macro AUROC is the mean over the classes where it is defined.
* The malignant score of a row is the summed probability of the malignant diagnoses (MEL + BCC + SCC).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from backend.data.schema import DIAGNOSES, MALIGNANT_DIAGNOSES

#: Specificity at which the operating-point sensitivity is reported.
TARGET_SPECIFICITY = 0.80


def _diagnosis_rows(y: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a known diagnosis: ``(class index (int), probabilities)``."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        y = np.where(np.isnan(y), -1, y)
    y = y.astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=float)
    known = y >= 0
    return y[known], probs[known]


def _binary_rows(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a known binary truth: ``(1/0 (int), score)``."""
    y = np.asarray(y, dtype=float).reshape(-1)
    known = np.isin(y, (0.0, 1.0))
    return y[known].astype(int), np.asarray(score, dtype=float).reshape(-1)[known]


def malignant_probability(probs: Any, class_names: Sequence[str] = DIAGNOSES) -> np.ndarray:
    """P(malignant) per row: the summed probability of the malignant diagnoses' columns.

    Args:
        probs: Probabilities, shape ``(N, C)``.
        class_names: Names of the ``C`` columns (the model's :data:`DIAGNOSES`, or ISIC's nine).
    """
    cols = [k for k, name in enumerate(class_names) if name in MALIGNANT_DIAGNOSES]
    return np.asarray(probs, dtype=float)[:, cols].sum(axis=1)


def balanced_accuracy(y: Any, probs: Any) -> float:
    """Mean recall of the argmax prediction over the classes present in the truth (NaN without a row).

    Args:
        y: Diagnosis index per row (``-1``/NaN unknown).
        probs: Probabilities, shape ``(N, C)``.
    """
    y, probs = _diagnosis_rows(y, probs)
    if y.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes predicted but absent from the truth
        return float(balanced_accuracy_score(y, probs.argmax(axis=1)))


def class_f1(y: Any, probs: Any, k: int) -> float:
    """F1 of class ``k`` (argmax prediction, one vs rest); NaN when ``k`` has no row in the truth.

    Args:
        y: Diagnosis index per row (``-1``/NaN unknown).
        probs: Probabilities, shape ``(N, C)``.
        k: Column of the class.
    """
    y, probs = _diagnosis_rows(y, probs)
    truth = y == k
    if not truth.any():
        return math.nan
    pred = probs.argmax(axis=1) == k
    tp = float((pred & truth).sum())
    return 2 * tp / float(pred.sum() + truth.sum())


def binary_auroc(y: Any, score: Any) -> float:
    """ROC AUC of ``score`` for a 1/0 truth; NaN without both a positive and a negative row.

    Args:
        y: 1 positive / 0 negative per row (anything else unknown and left out).
        score: Higher means more likely positive.
    """
    y, score = _binary_rows(y, score)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, score))


def class_auroc(y: Any, probs: Any, k: int) -> float:
    """One-vs-rest AUROC of class ``k`` over the rows with a known diagnosis (NaN where undefined).

    Args:
        y: Diagnosis index per row (``-1``/NaN unknown).
        probs: Probabilities, shape ``(N, C)``.
        k: Column of the class.
    """
    y, probs = _diagnosis_rows(y, probs)
    return binary_auroc((y == k).astype(int), probs[:, k])


def macro_auroc(y: Any, probs: Any) -> float:
    """Mean of :func:`class_auroc` over the classes where it is defined (NaN when none is).

    Args:
        y: Diagnosis index per row (``-1``/NaN unknown).
        probs: Probabilities, shape ``(N, C)``.
    """
    y, probs = _diagnosis_rows(y, probs)
    values = np.array([class_auroc(y, probs, k) for k in range(probs.shape[1])])
    defined = values[~np.isnan(values)]
    return float(np.mean(defined)) if defined.size else math.nan


def sensitivity_specificity(y: Any, score: Any, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of the call ``score >= threshold`` (each NaN without its rows).

    Args:
        y: 1 positive / 0 negative per row (anything else unknown and left out).
        score: Higher means more likely positive.
        threshold: Lowest score called positive.
    """
    y, score = _binary_rows(y, score)
    called = score >= threshold
    pos, neg = y == 1, y == 0
    sensitivity = float(called[pos].mean()) if pos.any() else math.nan
    specificity = float((~called[neg]).mean()) if neg.any() else math.nan
    return sensitivity, specificity


def sensitivity_at_specificity(y: Any, score: Any, specificity: float = TARGET_SPECIFICITY) -> float:
    """Best sensitivity over thresholds whose specificity is at least ``specificity`` (no interpolation).

    Args:
        y: 1 positive / 0 negative per row (anything else unknown and left out).
        score: Higher means more likely positive.
        specificity: Required specificity in [0, 1].

    Returns:
        The sensitivity, or NaN without both a positive and a negative row.
    """
    y, score = _binary_rows(y, score)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max())
