"""Model-card figures as rows for the model screen: test metrics, subgroups, other clinics.

Pure functions over the card dictionary (no Streamlit), so the model screen stays a thin layout and
the formatting is unit-tested.
"""

from __future__ import annotations

import math
from typing import Any

#: Readable names of the card's metric keys, in the order a clinician reads them.
METRIC_NAMES: dict[str, str] = {
    "auroc_malignant": "Malignant vs benign AUROC",
    "sensitivity_at_80_specificity": "Sensitivity at 80% specificity (malignant)",
    "auroc_melanoma": "Melanoma vs rest AUROC",
    "balanced_accuracy": "8-class balanced accuracy",
    "auroc_macro": "8-class macro AUROC",
    "ece": "Expected calibration error",
    "thickness_band_accuracy": "Thickness band accuracy",
    "thickness_auroc_0.76mm": "Thin vs thick (0.76 mm) melanoma AUROC",
}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _interval(entry: dict[str, Any]) -> str:
    lo, hi = _number(entry.get("lo")), _number(entry.get("hi"))
    return "n/a" if lo is None or hi is None else f"{lo:.3f}–{hi:.3f}"


def metric_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per test-split metric: name, value, 95% interval, rows it rests on.

    The headline metrics come first in :data:`METRIC_NAMES` order, then the per-class F1 scores.
    """
    metrics = card.get("test_metrics") or {}
    keys = [k for k in METRIC_NAMES if k in metrics] + sorted(k for k in metrics if k not in METRIC_NAMES)
    rows = []
    for key in keys:
        entry = metrics[key] or {}
        value = _number(entry.get("value"))
        name = METRIC_NAMES.get(key) or (f"F1 {key.split('/', 1)[1]}" if key.startswith("f1/") else key)
        rows.append({"metric": name, "value": "n/a" if value is None else f"{value:.3f}",
                     "95% CI": _interval(entry), "n": entry.get("n")})
    return rows


def subgroup_rows(card: dict[str, Any], attribute: str) -> list[dict[str, Any]]:
    """Test-split figures of one attribute's groups (sex, age band, site or source dataset)."""
    rows = []
    for r in card.get("test_subgroups") or []:
        if r.get("attribute") != attribute:
            continue
        ba, au = _number(r.get("balanced_accuracy")), _number(r.get("auroc_malignant"))
        rows.append({"group": r.get("group"), "images": r.get("n"), "malignant": r.get("n_malignant"),
                     "balanced accuracy": "n/a" if ba is None else f"{ba:.3f}",
                     "malignant AUROC": "n/a" if au is None else f"{au:.3f}"})
    return rows


def subgroup_attributes(card: dict[str, Any]) -> list[str]:
    """The attributes the card has subgroup figures for, in first-seen order."""
    seen: dict[str, None] = {}
    for r in card.get("test_subgroups") or []:
        seen.setdefault(str(r.get("attribute")), None)
    return list(seen)


def lodo_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The leave-one-dataset-out check: how the recipe ranks lesions from a clinic it never saw."""
    rows = []
    for r in (card.get("leave_one_dataset_out") or {}).get("results") or []:
        m = r.get("metrics") or {}
        row = {"recipe": r.get("recipe"), "dataset": r.get("dataset"), "model / images": r.get("setting"),
               "images": r.get("rows"), "malignant": r.get("malignant")}
        for key, label in (("auroc_malignant", "malignant AUROC"), ("auroc_melanoma", "melanoma AUROC")):
            entry = m.get(key) or {}
            value = _number(entry.get("value"))
            row[label] = "n/a" if value is None else f"{value:.3f} ({_interval(entry)})"
        rows.append(row)
    return rows


#: Plain names for the card's settings (other keys: underscores to spaces, first letter capitalised).
SETTING_NAMES: dict[str, str] = {
    "temperature": "Calibration temperature (1 = unchanged)",
    "ece_before": "Calibration error (ECE) before",
    "ece_after": "Calibration error (ECE) after",
    "fitted_on": "Fitted on",
    "img_size": "Network input (px, square)",
    "resize": "Resized to (px)",
    "mean": "Normalisation mean (R, G, B)",
    "std": "Normalisation spread (R, G, B)",
    "colour_constancy": "Colour constancy",
    "hair_removal": "Hair removal",
    "threshold": "Out-of-distribution threshold",
    "percentile": "Threshold percentile of the training images",
    "n": "Images",
}


def _setting_value(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting_value(v) for v in value)
    return str(value)


def setting_rows(value: dict[str, Any], prefix: str = "") -> list[dict[str, str]]:
    """A card section (nested mapping) as ``Setting``/``Value`` rows in words, nested keys joined with " › "."""
    rows: list[dict[str, str]] = []
    for key, item in value.items():
        name = prefix + SETTING_NAMES.get(str(key), str(key).replace("_", " ").capitalize())
        if isinstance(item, dict):
            rows += setting_rows(item, prefix=f"{name} › ")
        else:
            rows.append({"Setting": name, "Value": _setting_value(item)})
    return rows
