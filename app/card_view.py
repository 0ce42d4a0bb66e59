"""Model-card figures as rows for the model screen: test metrics, subgroups, other clinics.

Pure functions over the card dictionary (no Streamlit), so the model screen stays a thin layout and
the formatting is unit-tested.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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


#: What each kind of figure on the card means, in a clinician's words.
FIGURE_WORDS: dict[str, str] = {
    "AUROC": "How well the model ranks: the chance that a randomly chosen lesion with the condition gets a higher "
             "score than a randomly chosen one without it. 0.5 is a coin toss, 1.0 is perfect ranking; it does "
             "not depend on where the traffic-light thresholds are set.",
    "Sensitivity": "Of the lesions that have the condition, the share the model flags.",
    "Specificity": "Of the lesions that do not have it, the share the model leaves unflagged.",
    "Balanced accuracy": "The class-balanced suggested diagnosis's hit rate (the diagnosis shown first when it "
                         "is at least 10% probable) averaged over the 8 diagnoses, each counting equally however "
                         "rare: 0.125 would be guessing, 1.0 every lesion named right.",
    "F1": "For one diagnosis, the balance of how often the model names it when it is present (recall) and how "
          "often it is right when it names it (precision); 1.0 is perfect.",
    "Calibration error (ECE)": "How far the stated probabilities are from what happened: 0.03 means they are "
                               "off by about 3 percentage points on average.",
    "95% interval": "The range the figure would likely fall in on another sample of patients like these.",
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
        rows.append({"group": r.get("group"), "images": r.get("n"),
                     "with a diagnosis": r.get("n_diagnosed", r.get("n")), "malignant": r.get("n_malignant"),
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


#: Readable names of the validation-metric keys (``val/`` prefix stripped), in reading order; the
#: headline names are :data:`METRIC_NAMES`'. Per-class keys (``f1/MEL``) go to :func:`validation_class_rows`.
VALIDATION_NAMES: dict[str, str] = {
    "auroc_malignant": METRIC_NAMES["auroc_malignant"],
    "sensitivity_at_spec80_malignant": METRIC_NAMES["sensitivity_at_80_specificity"],
    "sensitivity_at_80_specificity": METRIC_NAMES["sensitivity_at_80_specificity"],
    "sensitivity_malignant": "Sensitivity for malignant (malignant probability ≥ 0.5)",
    "specificity_malignant": "Specificity for malignant (malignant probability ≥ 0.5)",
    "auroc_melanoma": METRIC_NAMES["auroc_melanoma"],
    "balanced_accuracy": METRIC_NAMES["balanced_accuracy"],
    "accuracy": "8-class accuracy",
    "auroc_macro": METRIC_NAMES["auroc_macro"],
    "f1_macro": "8-class mean F1",
    "f1_weighted": "8-class F1 weighted by class size",
    "ece": METRIC_NAMES["ece"],
    "thickness_mae_mm": "Thickness: mean absolute error (mm)",
    "thickness_rmse_mm": "Thickness: root-mean-square error (mm)",
    "thickness_mape": "Thickness: mean relative error",
    "thickness_interval_accuracy": "Thickness: share of estimates inside the recorded range",
    "thickness_band_accuracy": METRIC_NAMES["thickness_band_accuracy"],
    "thickness_split0.76_accuracy": "Thin vs thick (0.76 mm) melanoma accuracy",
    "thickness_split0.76_auroc": METRIC_NAMES["thickness_auroc_0.76mm"],
    "thickness_auroc_0.76mm": METRIC_NAMES["thickness_auroc_0.76mm"],
    "loss": "Training loss on the validation images",
    "n_images": "Images",
    "n_diagnosis": "Images with a known diagnosis",
    "n_malignant": "Malignant images",
    "n_benign": "Benign images",
    "n_thickness_exact": "Melanomas with an exact thickness",
    "n_thickness_interval": "Melanomas with a thickness range",
    "n_thickness_split0.76_thin": "Thin melanomas (< 0.76 mm)",
    "n_thickness_split0.76_thick": "Thick melanomas (≥ 0.76 mm)",
}

#: Per-class validation keys (``precision/MEL``) and their column names.
CLASS_COLUMNS: dict[str, str] = {"support": "images", "precision": "precision", "recall": "recall (sensitivity)",
                                 "f1": "F1", "auroc": "AUROC (vs rest)"}


def _metric_key(key: str) -> str:
    return key[4:] if key.startswith(("val/", "val_")) else key


def _fallback_name(key: str) -> str:
    text = key.replace("/", " ").replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _count_or_score(key: str, value: Any) -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    if key.startswith("n_") or key.startswith("support") or (number.is_integer() and abs(number) > 1):
        return f"{number:.0f}"
    return f"{number:.3f}"


def validation_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """The card's validation metrics as ``metric``/``value`` rows in words, scores to 3 decimals.

    Known keys come in :data:`VALIDATION_NAMES` order, unknown ones after them with a readable name
    (prefix ``val/`` stripped, underscores to spaces); per-class keys and non-numbers are left out.
    """
    plain = {_metric_key(str(k)): v for k, v in metrics.items()}
    plain = {k: v for k, v in plain.items() if "/" not in k and not isinstance(v, (dict, list, str))}
    keys = [k for k in VALIDATION_NAMES if k in plain] + [k for k in plain if k not in VALIDATION_NAMES]
    seen: set[str] = set()
    rows = []
    for key in keys:
        name = VALIDATION_NAMES.get(key) or _fallback_name(key)
        if name in seen:
            continue
        seen.add(name)
        rows.append({"metric": name, "value": _count_or_score(key, plain[key])})
    return rows


def validation_class_rows(metrics: dict[str, Any], label: Callable[[str], str] = str) -> list[dict[str, str]]:
    """Per-class validation figures (images, precision, recall, F1, AUROC), one row per class; ``label`` names it."""
    classes: dict[str, dict[str, str]] = {}
    for key, value in metrics.items():
        kind, _, code = _metric_key(str(key)).partition("/")
        if code and kind in CLASS_COLUMNS:
            row = classes.setdefault(code, {"class": label(code)})
            row[CLASS_COLUMNS[kind]] = _count_or_score(kind, value)
    columns = ["class", *CLASS_COLUMNS.values()]
    return [{c: row.get(c, "n/a") for c in columns} for row in classes.values()]


#: Plain names for the card's settings (other keys: underscores to spaces, first letter capitalised).
SETTING_NAMES: dict[str, str] = {
    "method": "Method",
    "temperature": "Calibration temperature (1 = unchanged)",
    "ece_before": "Calibration error (ECE) before",
    "ece_after": "Calibration error (ECE) after",
    "fitted_on": "Fitted on",
    "chosen_on": "Chosen on",
    "version": "Preprocessing version",
    "img_size": "Network input (px, square)",
    "resize": "Resized to (px)",
    "mean": "Normalisation mean (R, G, B)",
    "std": "Normalisation spread (R, G, B)",
    "colour_constancy": "Colour constancy",
    "color_constancy": "Colour constancy (Shades of Gray)",
    "color_constancy_power": "Colour constancy strength (Shades of Gray power)",
    "hair_removal": "Hair removal",
    "threshold": "Out-of-distribution threshold",
    "percentile": "Threshold percentile of the training images",
    "n": "Images",
    "dim": "Image features compared",
}

#: Card fields that mean nothing on a screen (names of stored tensors).
HIDDEN_SETTINGS = frozenset({"tensors"})

_SPLIT_WORDS = {"train": "training", "val": "validation", "validation": "validation", "test": "test"}
_SPLIT_SOURCE = re.compile(r"^\s*(train|val|validation|test)\s+split\s+of\s+[^(]*?\s*(\(.*\))?\s*$", re.IGNORECASE)
_FILE_SUFFIX = re.compile(r"\.(csv|ckpt|pt|pth|safetensors|onnx|json|ya?ml|parquet|npz|npy|txt)\b", re.IGNORECASE)


def _looks_like_path(token: str) -> bool:
    return "/" in token or "\\" in token or bool(_FILE_SUFFIX.search(token))


def plain_source(text: Any) -> str:
    """A card's "fitted on"/"chosen on" text in words, without file paths.

    ``val split of runs/x/splits.csv (5 images)`` reads ``the validation split (5 images)``; in any
    other text the words that look like file paths are dropped.
    """
    if text is None:
        return ""
    text = str(text)
    match = _SPLIT_SOURCE.match(text)
    if match:
        words = f"the {_SPLIT_WORDS[match.group(1).lower()]} split"
        return f"{words} {match.group(2)}" if match.group(2) else words
    return " ".join(t for t in text.split() if not _looks_like_path(t))


def _method(value: Any) -> str:
    text = plain_source(value)
    if "mahalanobis" in text.lower():  # the OOD statistics: the shrinkage estimator is no clinic's business
        return "Mahalanobis distance of the model's image features"
    return text


def _round3(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _setting_value(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else _round3(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting_value(v) for v in value)
    return plain_source(value) or "—"


def setting_rows(value: dict[str, Any], prefix: str = "") -> list[dict[str, str]]:
    """A card section (nested mapping) as ``Setting``/``Value`` rows in words, nested keys joined with " › ".

    Numbers are rounded to 3 decimals, file paths and stored-tensor names left out.
    """
    rows: list[dict[str, str]] = []
    for key, item in value.items():
        if key in HIDDEN_SETTINGS:
            continue
        name = prefix + SETTING_NAMES.get(str(key), str(key).replace("_", " ").capitalize())
        if isinstance(item, dict):
            rows += setting_rows(item, prefix=f"{name} › ")
        elif key == "method":
            rows.append({"Setting": name, "Value": _method(item) or "—"})
        else:
            rows.append({"Setting": name, "Value": _setting_value(item)})
    return rows


def _ordinal(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "?"
    text = _round3(number)
    if not number.is_integer():
        return f"{text}th"
    n = int(number)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def calibration_sentence(calibration: dict[str, Any]) -> str:
    """How the probabilities were calibrated, in one sentence."""
    method = str(calibration.get("method") or "")
    temperature = _number(calibration.get("temperature"))
    if not method or method.lower().startswith("none"):
        return "Probabilities are the network's raw outputs, not calibrated."
    text = f"Probabilities calibrated by {plain_source(method)}"
    if temperature is not None:
        text += f" (T = {_round3(temperature)}" + (", i.e. unchanged)" if temperature == 1 else ")")
    source = plain_source(calibration.get("fitted_on"))
    if source:
        text += f" on {source}"
    if calibration.get("class_offsets"):
        text += ", with one offset per diagnosis that puts back how common it is"
    before, after = _number(calibration.get("ece_before")), _number(calibration.get("ece_after"))
    if before is not None and after is not None:
        text += (f"; expected calibration error {before:.3f} → {after:.3f} "
                 "(0 = predicted probabilities match how often the diagnosis is right)")
    text += "."
    if calibration.get("class_offsets"):
        text += (" The network was trained to weigh every diagnosis equally, and its class-balanced suggested "
                 "diagnosis still does (shown first when it is at least 10% probable).")
    return text


def _same(values: Any, target: float) -> bool:
    return isinstance(values, (list, tuple)) and bool(values) and all(_number(v) == target for v in values)


def preprocessing_sentence(pre: dict[str, Any]) -> str:
    """What is done to an image before the network sees it, in one sentence."""
    parts = []
    size = pre.get("img_size") or pre.get("resize")
    if size:
        parts.append(f"Images resized to {size} px (shorter side) and centre-cropped to a square")
    if "color_constancy" in pre or "colour_constancy" in pre:
        on = pre.get("color_constancy", pre.get("colour_constancy"))
        parts.append("colour constancy: Shades of Gray" if on else "no colour constancy")
    if pre.get("hair_removal"):
        parts.append("hair removed digitally")
    mean, std = pre.get("mean"), pre.get("std")
    if _same(mean, 0.5) and _same(std, 0.5):
        parts.append("input scaled to [-1, 1]")
    elif mean is not None and std is not None:
        parts.append(f"input normalised (mean {_setting_value(mean)}, spread {_setting_value(std)})")
    if not parts:
        return ""
    text = ", ".join(parts)
    return text[:1].upper() + text[1:] + "."


def test_resolution_sentence(card: dict[str, Any]) -> str:
    """Why the model predicts at another size than it was trained at, in one sentence ("" when it does not)."""
    record = card.get("test_resolution") or {}
    size, trained = record.get("img_size"), record.get("train_img_size")
    if not size or size == trained:
        return ""
    return (f"The network learned on {trained} px images and predicts at {size} px, the size at which it best "
            "separated malignant from benign lesions in the validation images, with its internal normalisation "
            f"re-measured on training images at {size} px.")


def ood_sentence(ood: dict[str, Any], flag_text: str = "unlike the images the model was trained on") -> str:
    """What the out-of-distribution check flags, in one sentence."""
    n = _number(ood.get("n"))
    images = f"{n:.0f} training images" if n is not None else "the training images"
    return (f"Out-of-distribution check: images far from the training images (distance above the "
            f"{_ordinal(ood.get('percentile', 99))} percentile of {images}) are flagged \"{flag_text}\" and "
            "get the grey light, not assessable: their result is shown only when asked for.")


def without_paths(card: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of the card whose operating points say "validation split (N images)", not the splits file."""
    ops = card.get("operating_points")
    if not isinstance(ops, dict) or not isinstance(ops.get("validation"), dict):
        return card
    validation = dict(ops["validation"])
    if validation.get("chosen_on"):
        validation["chosen_on"] = plain_source(validation["chosen_on"]).removeprefix("the ")
    return {**card, "operating_points": {**ops, "validation": validation}}
