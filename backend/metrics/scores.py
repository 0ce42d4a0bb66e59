"""The evaluation report: every metric of one split as a flat ``{name: value}`` dict with notes.

:func:`compute_metrics` takes whole-split numpy arrays (what ``scripts/evaluate.py`` and the bundle
export have after inference) and computes each figure with the one function that defines it in
:mod:`backend.metrics.classification` and :mod:`backend.metrics.thickness` (the model card and the
training collection, :mod:`backend.metrics.collection`, follow the same definitions). Next to each
value that needs it, ``notes`` says how it was computed or why it is NaN:

* Balanced accuracy is the mean recall over the classes present in the truth; a class that is
  predicted but absent from the truth does not count.
* Macro F1 averages over classes present in the truth or the predictions (sklearn's default); the
  per-class F1, recall and AUROC of a class absent from the truth are NaN.
* The macro AUROC averages the defined per-class AUROCs and says which were left out.
* Rows whose diagnosis is unknown (``-1``: UNK or label-only rows) are left out of the diagnosis
  metrics but still count for the benign/malignant metrics.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from backend.data.schema import DIAGNOSES, THICKNESS_SPLIT_MM
from backend.metrics.calibration import balanced_decision_scores
from backend.metrics.classification import (
    TARGET_SPECIFICITY,
    balanced_accuracy,
    binary_auroc,
    class_auroc,
    class_f1,
    malignant_probability,
    sensitivity_at_specificity,
    sensitivity_specificity,
)
from backend.metrics.thickness import (
    labelled_rows,
    thick_vs_thin,
    thickness_interval_accuracy,
    thickness_mae,
    thickness_mape,
    thickness_rmse,
    thickness_split_accuracy,
)


def _as_1d(name: str, values: Any, n: int, dtype: Any = float) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but probs has {n} rows")
    return arr


def _diagnosis_metrics(
    y: np.ndarray, probs: np.ndarray, decisions: np.ndarray, class_names: tuple[str, ...], out: dict[str, Any],
    notes: dict[str, str],
) -> None:
    """Class metrics: those of the called class from the argmax of ``decisions``, the AUROCs from ``probs``."""
    num_classes = probs.shape[1]
    labels = list(range(num_classes))
    pred = decisions.argmax(axis=1)
    out["n_diagnosis"] = int(y.size)
    if y.size == 0:
        notes["n_diagnosis"] = "no row with a known diagnosis: diagnosis metrics not computed"
        return
    out["accuracy"] = float(accuracy_score(y, pred))
    out["balanced_accuracy"] = balanced_accuracy(y, decisions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true / y_pred
        out["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
        out["f1_weighted"] = float(f1_score(y, pred, average="weighted", zero_division=0))
        precision, recall, _, support = precision_recall_fscore_support(
            y, pred, labels=labels, average=None, zero_division=np.nan
        )
    absent = [class_names[k] for k in labels if support[k] == 0]
    if absent:
        notes["balanced_accuracy"] = f"mean recall over classes present in the truth; absent: {', '.join(absent)}"
    aurocs = []
    for k, name in enumerate(class_names):
        out[f"support/{name}"] = int(support[k])
        out[f"precision/{name}"] = float(precision[k])
        out[f"recall/{name}"] = float(recall[k])
        out[f"f1/{name}"] = class_f1(y, decisions, k)
        auroc = class_auroc(y, probs, k)
        out[f"auroc/{name}"] = auroc
        if math.isnan(auroc):
            notes[f"auroc/{name}"] = f"undefined: {name} has no positive or no negative row in the truth"
        else:
            aurocs.append(auroc)
        if support[k] == 0:
            notes[f"recall/{name}"] = f"undefined: no {name} row in the truth"
            notes[f"f1/{name}"] = f"undefined: no {name} row in the truth"
    out["auroc_macro"] = float(np.mean(aurocs)) if aurocs else math.nan
    left_out = [name for name in class_names if math.isnan(out[f"auroc/{name}"])]
    if left_out:
        notes["auroc_macro"] = f"mean over {len(aurocs)} classes; undefined and left out: {', '.join(left_out)}"
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=labels)


def _malignant_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float, out: dict[str, Any], notes: dict[str, str]
) -> None:
    out["n_malignant"] = int((y == 1).sum())
    out["n_benign"] = int((y == 0).sum())
    out["auroc_malignant"] = binary_auroc(y, score)
    if math.isnan(out["auroc_malignant"]):
        notes["auroc_malignant"] = "undefined: the truth lacks malignant or benign rows"
    out["sensitivity_malignant"], out["specificity_malignant"] = sensitivity_specificity(y, score, threshold)
    notes["sensitivity_malignant"] = f"malignant probability >= {threshold:g}"
    notes["specificity_malignant"] = f"malignant probability < {threshold:g}"
    key = f"sensitivity_at_spec{round(TARGET_SPECIFICITY * 100)}_malignant"
    out[key] = sensitivity_at_specificity(y, score, TARGET_SPECIFICITY)
    notes[key] = f"best sensitivity among thresholds with specificity >= {TARGET_SPECIFICITY:.0%}"


def _thickness_metrics(
    pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, split_mm: float, out: dict[str, Any], notes: dict[str, str]
) -> None:
    _, _, open_hi, labelled = labelled_rows(pred, lo, hi)
    exact = labelled & (lo == open_hi)
    out["n_thickness_exact"] = int(exact.sum())
    out["n_thickness_interval"] = int((labelled & (lo < open_hi)).sum())
    out["thickness_mae_mm"] = thickness_mae(pred, lo, hi)
    out["thickness_rmse_mm"] = thickness_rmse(pred, lo, hi)
    out["thickness_mape"] = thickness_mape(pred, lo, hi)
    n_nonzero = int((exact & (lo > 0)).sum())
    notes["thickness_mape"] = (
        f"fraction, over {n_nonzero} exact labels > 0 mm; "
        f"{int(exact.sum()) - n_nonzero} in situ (0 mm) labels excluded (percentage error undefined)"
    )
    out["thickness_interval_accuracy"] = thickness_interval_accuracy(pred, lo, hi)
    notes["thickness_interval_accuracy"] = "fraction of interval labels (lo < hi) whose prediction lies in [lo, hi]"

    # Thin (< split) vs thick (>= split), where the label interval decides it.
    truth, score = thick_vs_thin(pred, lo, hi, split_mm)
    key = f"thickness_split{split_mm:g}_"
    out[f"n_{key}thick"] = int(truth.sum())
    out[f"n_{key}thin"] = int(truth.size - truth.sum())
    out[f"{key}accuracy"] = thickness_split_accuracy(pred, lo, hi, split_mm)
    out[f"{key}auroc"] = binary_auroc(truth, score)
    undecided = int(labelled.sum()) - int(truth.size)
    notes[f"{key}accuracy"] = (
        f"thick = label >= {split_mm:g} mm (lo >= {split_mm:g}), thin = hi <= {split_mm:g}; "
        f"{undecided} labels straddling {split_mm:g} mm excluded"
    )
    notes[f"{key}auroc"] = f"predicted mm as the score for thick vs thin; {undecided} straddling labels excluded"


def compute_metrics(
    y_true_diag: Any,
    probs: Any,
    y_true_malignant: Any = None,
    malignant_prob: Any = None,
    threshold: float = 0.5,
    thickness_pred_mm: Any = None,
    thickness_lo: Any = None,
    thickness_hi: Any = None,
    class_names: tuple[str, ...] = DIAGNOSES,
    thickness_split_mm: float = THICKNESS_SPLIT_MM,
    class_offsets: Any = None,
) -> dict[str, Any]:
    """Every evaluation metric of one split, from whole-split arrays.

    Args:
        y_true_diag: Diagnosis index per row in head order, ``-1`` where unknown (UNK, label-only).
        probs: Diagnosis probabilities, shape ``(N, C)``.
        y_true_malignant: 1 malignant / 0 benign per row; NaN or ``-1`` where unknown. None skips
            the malignant metrics.
        malignant_prob: Malignant probability per row; None derives it as the summed probability of
            the malignant diagnoses (MEL + BCC + SCC).
        threshold: Malignant-probability threshold for sensitivity and specificity.
        thickness_pred_mm: Predicted Breslow thickness in mm per row; None skips thickness metrics.
        thickness_lo: Label interval lower bound in mm (NaN = no thickness label).
        thickness_hi: Label interval upper bound in mm (``inf`` or NaN = open; ``lo == hi`` = exact).
        class_names: Names of the ``C`` probability columns, used in the keys.
        thickness_split_mm: Thin/thick boundary for the split accuracy and AUROC.
        class_offsets: The calibration's per-class offsets (bias-corrected temperature scaling):
            the called class, behind accuracy, balanced accuracy, F1, precision, recall and the
            confusion matrix, is then the class-balanced decision
            (``backend.metrics.calibration.balanced_decision_scores``); None calls the most
            probable class.

    Returns:
        Flat dict: float/int metrics keyed like ``accuracy``, ``f1/MEL``, ``auroc_malignant``,
        ``thickness_mae_mm``; ``confusion_matrix`` (ndarray, rows = truth); and ``notes``, a dict
        from metric name to a sentence on how it was computed or why it is NaN.

    Raises:
        ValueError: When array lengths or the number of probability columns do not match.
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must have shape (N, {len(class_names)}), got {probs.shape}")
    n = probs.shape[0]
    y = _as_1d("y_true_diag", y_true_diag, n, dtype=float)
    y = np.where(np.isnan(y), -1, y).astype(int)
    if y.max(initial=-1) >= len(class_names) or y.min(initial=0) < -1:
        raise ValueError(f"y_true_diag values must be in [-1, {len(class_names) - 1}]")
    out: dict[str, Any] = {}
    notes: dict[str, str] = {}
    known = y >= 0
    decisions = balanced_decision_scores(probs, class_offsets)
    _diagnosis_metrics(y[known], probs[known], decisions[known], tuple(class_names), out, notes)

    if y_true_malignant is not None:
        y_mal = _as_1d("y_true_malignant", y_true_malignant, n)
        if malignant_prob is None:
            score = malignant_probability(probs, class_names)
        else:
            score = _as_1d("malignant_prob", malignant_prob, n)
        _malignant_metrics(y_mal, score, threshold, out, notes)

    if thickness_pred_mm is not None:
        if thickness_lo is None or thickness_hi is None:
            raise ValueError("thickness_pred_mm needs thickness_lo and thickness_hi")
        _thickness_metrics(
            _as_1d("thickness_pred_mm", thickness_pred_mm, n),
            _as_1d("thickness_lo", thickness_lo, n),
            _as_1d("thickness_hi", thickness_hi, n),
            thickness_split_mm,
            out,
            notes,
        )
    out["notes"] = notes
    return out


def metrics_to_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """Scalar metrics as a ``metric, value, note`` table (arrays such as the confusion matrix are left out)."""
    notes = metrics.get("notes", {}) or {}
    rows = []
    for name, value in metrics.items():
        if name == "notes" or isinstance(value, (np.ndarray, list, tuple, dict)):
            continue
        rows.append({"metric": name, "value": float(value), "note": notes.get(name, "")})
    return pd.DataFrame(rows, columns=["metric", "value", "note"])


def write_metrics_csv(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`metrics_to_frame` as CSV (creating parent folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics_to_frame(metrics).to_csv(path, index=False)
    return path
