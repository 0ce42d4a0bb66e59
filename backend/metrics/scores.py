"""Classification, benign/malignant and Breslow-thickness metrics.

Two entry points share one set of definitions:

* :func:`build_classification_metrics` returns a ``torchmetrics.MetricCollection`` that the
  Lightning module updates every validation/test step (torchmetrics gathers the states across
  DDP ranks before computing).
* :func:`compute_metrics` takes whole-split numpy arrays (what ``scripts/evaluate.py`` has after
  inference) and returns a flat ``{name: value}`` dict, with sklearn doing the arithmetic.

Definitions both follow, so numbers in TensorBoard and in the evaluation report agree:

* Balanced accuracy is the mean recall over the classes present in the truth (sklearn's
  ``balanced_accuracy_score`` and the ISIC challenge's "balanced multiclass accuracy"); a class
  that is predicted but absent from the truth does not count.
* Macro F1 averages over classes present in the truth or the predictions (sklearn's default;
  torchmetrics drops classes with ``tp + fp + fn == 0``, which is the same set).
* Per-class AUROC is undefined (NaN) for a class without both positives and negatives in the
  truth; the macro AUROC averages the defined ones and says which were left out.
* Rows whose diagnosis is unknown (``-1``: UNK or label-only rows) are left out of the diagnosis
  metrics but still count for the benign/malignant metrics.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backend.data.schema import DIAGNOSES, MALIGNANT_DIAGNOSES

if TYPE_CHECKING:
    import torchmetrics

#: Breslow thickness (mm) separating "thin" from "thick" melanomas in the Derm7pt bands.
THICKNESS_SPLIT_MM = 0.76
#: Specificity at which the operating-point sensitivity is reported.
TARGET_SPECIFICITY = 0.80


# --------------------------------------------------------------------------- torchmetrics (Lightning)


_LAZY_METRIC_CLASSES = ("BalancedAccuracy", "DefinedAUROC")


def __getattr__(name: str) -> Any:
    """Module attributes built on first use (PEP 562): the torchmetrics subclasses import torch."""
    if name in _LAZY_METRIC_CLASSES:
        return dict(zip(_LAZY_METRIC_CLASSES, _metric_classes(), strict=True))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _metric_classes() -> tuple[type, type]:
    """Build the two torchmetrics subclasses once, on first use, so importing this module stays light.

    They are then ordinary module attributes (same ``__module__``/``__qualname__``), so metric
    collections pickle (DDP spawn, deepcopy) like any torchmetrics metric.
    """
    cached = globals().get("_METRIC_CLASSES")
    if cached is not None:
        return cached
    import torch
    from torchmetrics.classification import MulticlassAUROC, MulticlassConfusionMatrix
    from torchmetrics.utilities.data import dim_zero_cat

    class BalancedAccuracy(MulticlassConfusionMatrix):
        """Mean recall over the classes present in the target (sklearn ``balanced_accuracy_score``).

        ``MulticlassRecall(average="macro")`` would count a class that is predicted but absent
        from the target as recall 0; sklearn and the ISIC scorer leave it out.
        """

        def compute(self) -> torch.Tensor:
            cm = self.confmat.double()
            support = cm.sum(dim=1)
            present = support > 0
            if not bool(present.any()):
                return torch.tensor(float("nan"), device=cm.device)
            recall = cm.diagonal()[present] / support[present]
            return recall.mean().float()

    class DefinedAUROC(MulticlassAUROC):
        """One-vs-rest AUROC that is NaN (not 0) for a class lacking positives or negatives.

        With ``macro=True`` it returns the mean over the defined classes, like
        :func:`compute_metrics`.
        """

        def __init__(self, num_classes: int, macro: bool, **kwargs: Any) -> None:
            super().__init__(num_classes=num_classes, average="none", thresholds=None, **kwargs)
            self.macro = macro

        def compute(self) -> torch.Tensor:
            target = dim_zero_cat(self.target).long()
            counts = torch.bincount(target[target >= 0], minlength=self.num_classes)
            defined = (counts > 0) & (counts < target.numel())
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*samples in targets.*")
                per_class = super().compute()
            per_class = torch.where(defined, per_class, torch.full_like(per_class, float("nan")))
            if not self.macro:
                return per_class
            if not bool(defined.any()):
                return torch.tensor(float("nan"), device=per_class.device)
            return per_class[defined].mean()

    for cls in (BalancedAccuracy, DefinedAUROC):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    globals()["_METRIC_CLASSES"] = (BalancedAccuracy, DefinedAUROC)
    return BalancedAccuracy, DefinedAUROC


def build_classification_metrics(num_classes: int = len(DIAGNOSES)) -> torchmetrics.MetricCollection:
    """Per-epoch diagnosis metrics for Lightning: update with ``(probs (N, C), target (N,))``.

    Targets equal to ``-1`` are ignored, so a batch may be passed whole. Keys (clone with a prefix
    such as ``val/``): ``accuracy``, ``balanced_accuracy``, ``f1_macro``, ``f1_weighted``,
    ``auroc_macro`` (scalars); ``precision``, ``recall``, ``f1``, ``auroc`` (per-class vectors in
    head order; undefined AUROC is NaN) and ``confusion_matrix`` (rows = truth, counts).

    Args:
        num_classes: Number of diagnosis classes (the model head size).

    Returns:
        A fresh, un-prefixed collection.
    """
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    balanced_accuracy, defined_auroc = _metric_classes()
    common = {"num_classes": num_classes, "ignore_index": -1}
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(average="micro", **common),
            "balanced_accuracy": balanced_accuracy(**common),
            "f1_macro": MulticlassF1Score(average="macro", **common),
            "f1_weighted": MulticlassF1Score(average="weighted", **common),
            "precision": MulticlassPrecision(average="none", **common),
            "recall": MulticlassRecall(average="none", **common),
            "f1": MulticlassF1Score(average="none", **common),
            "auroc_macro": defined_auroc(macro=True, **common),
            "auroc": defined_auroc(macro=False, **common),
            "confusion_matrix": MulticlassConfusionMatrix(**common),
        }
    )


# --------------------------------------------------------------------------- numpy (evaluate.py)


def _as_1d(name: str, values: Any, n: int, dtype: Any = float) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but probs has {n} rows")
    return arr


def _binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, or NaN when ``y`` lacks positives or negatives."""
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, score))


def sensitivity_at_specificity(y: np.ndarray, score: np.ndarray, specificity: float = TARGET_SPECIFICITY) -> float:
    """Best sensitivity over thresholds whose specificity is at least ``specificity`` (no interpolation).

    Args:
        y: Binary truth (1 = positive).
        score: Higher means more likely positive.
        specificity: Required specificity in [0, 1].

    Returns:
        The sensitivity, or NaN when ``y`` lacks positives or negatives.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y).astype(int)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    fpr, tpr, _ = roc_curve(y, np.asarray(score, dtype=float), drop_intermediate=False)
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max())


def _diagnosis_metrics(
    y: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...], out: dict[str, Any], notes: dict[str, str]
) -> None:
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    num_classes = probs.shape[1]
    labels = list(range(num_classes))
    pred = probs.argmax(axis=1)
    out["n_diagnosis"] = int(y.size)
    if y.size == 0:
        notes["n_diagnosis"] = "no row with a known diagnosis: diagnosis metrics not computed"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true / y_pred
        out["accuracy"] = float(accuracy_score(y, pred))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
        out["f1_weighted"] = float(f1_score(y, pred, average="weighted", zero_division=0))
        precision, recall, f1, support = precision_recall_fscore_support(
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
        out[f"f1/{name}"] = float(f1[k])
        auroc = _binary_auroc((y == k).astype(int), probs[:, k])
        out[f"auroc/{name}"] = auroc
        if math.isnan(auroc):
            notes[f"auroc/{name}"] = f"undefined: {name} has no positive or no negative row in the truth"
        else:
            aurocs.append(auroc)
        if support[k] == 0:
            notes[f"recall/{name}"] = f"undefined: no {name} row in the truth"
    out["auroc_macro"] = float(np.mean(aurocs)) if aurocs else math.nan
    left_out = [name for name in class_names if math.isnan(out[f"auroc/{name}"])]
    if left_out:
        notes["auroc_macro"] = f"mean over {len(aurocs)} classes; undefined and left out: {', '.join(left_out)}"
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=labels)


def _malignant_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float, out: dict[str, Any], notes: dict[str, str]
) -> None:
    known = np.isin(y, (0.0, 1.0))
    y, score = y[known].astype(int), score[known]
    out["n_malignant"] = int((y == 1).sum())
    out["n_benign"] = int((y == 0).sum())
    out["auroc_malignant"] = _binary_auroc(y, score)
    if math.isnan(out["auroc_malignant"]):
        notes["auroc_malignant"] = "undefined: the truth lacks malignant or benign rows"
    pred = score >= threshold
    pos, neg = y == 1, y == 0
    out["sensitivity_malignant"] = float(pred[pos].mean()) if pos.any() else math.nan
    out["specificity_malignant"] = float((~pred[neg]).mean()) if neg.any() else math.nan
    notes["sensitivity_malignant"] = f"malignant probability >= {threshold:g}"
    notes["specificity_malignant"] = f"malignant probability < {threshold:g}"
    key = f"sensitivity_at_spec{round(TARGET_SPECIFICITY * 100)}_malignant"
    out[key] = sensitivity_at_specificity(y, score, TARGET_SPECIFICITY)
    notes[key] = f"best sensitivity among thresholds with specificity >= {TARGET_SPECIFICITY:.0%}"


def _thickness_metrics(
    pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, split_mm: float, out: dict[str, Any], notes: dict[str, str]
) -> None:
    labelled = ~np.isnan(lo) & ~np.isnan(pred)
    hi = np.where(np.isnan(hi) & labelled, np.inf, hi)  # a lower bound alone = open interval
    exact = labelled & (lo == hi)
    interval = labelled & (lo < hi)
    out["n_thickness_exact"] = int(exact.sum())
    out["n_thickness_interval"] = int(interval.sum())

    err = pred[exact] - lo[exact]
    out["thickness_mae_mm"] = float(np.abs(err).mean()) if err.size else math.nan
    out["thickness_rmse_mm"] = float(np.sqrt((err**2).mean())) if err.size else math.nan
    nonzero = exact & (lo > 0)
    n_zero = int(exact.sum() - nonzero.sum())
    ape = np.abs(pred[nonzero] - lo[nonzero]) / lo[nonzero]
    out["thickness_mape"] = float(ape.mean()) if ape.size else math.nan
    notes["thickness_mape"] = (
        f"fraction, over {int(nonzero.sum())} exact labels > 0 mm; "
        f"{n_zero} in situ (0 mm) labels excluded (percentage error undefined)"
    )

    inside = (pred[interval] >= lo[interval]) & (pred[interval] <= hi[interval])
    out["thickness_interval_accuracy"] = float(inside.mean()) if inside.size else math.nan
    notes["thickness_interval_accuracy"] = "fraction of interval labels (lo < hi) whose prediction lies in [lo, hi]"

    # Thin (< split) vs thick (>= split), where the label interval decides it.
    thick = labelled & (lo >= split_mm)
    thin = labelled & (hi <= split_mm) & ~thick
    decided = thick | thin
    key = f"thickness_split{split_mm:g}_"
    out[f"n_{key}thick"] = int(thick.sum())
    out[f"n_{key}thin"] = int(thin.sum())
    truth = thick[decided].astype(int)
    called = pred[decided] >= split_mm
    out[f"{key}accuracy"] = float((called == truth.astype(bool)).mean()) if truth.size else math.nan
    out[f"{key}auroc"] = _binary_auroc(truth, pred[decided])
    undecided = int((labelled & ~decided).sum())
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
    _diagnosis_metrics(y[known], probs[known], tuple(class_names), out, notes)

    if y_true_malignant is not None:
        y_mal = _as_1d("y_true_malignant", y_true_malignant, n)
        if malignant_prob is None:
            cols = [k for k, name in enumerate(class_names) if name in MALIGNANT_DIAGNOSES]
            score = probs[:, cols].sum(axis=1)
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
