"""Model-card figures: test-split metrics with 95% bootstrap intervals, overall and by subgroup.

Every figure is computed by the one function that defines it in :mod:`backend.metrics.classification`,
:mod:`backend.metrics.thickness` and :mod:`backend.metrics.calibration`, the same functions behind
:func:`backend.metrics.scores.compute_metrics`. Intervals come from
:func:`backend.metrics.bootstrap.bootstrap_ci`, resampling whole patients (or lesions) where a
grouping key is known, because images of one patient are not independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from backend.data.schema import DIAGNOSES, MELANOMA_INDEX, THICKNESS_SPLIT_MM
from backend.metrics.bootstrap import bootstrap_ci
from backend.metrics.calibration import balanced_decision_scores, expected_calibration_error
from backend.metrics.classification import (
    TARGET_SPECIFICITY,
    balanced_accuracy,
    binary_auroc,
    class_auroc,
    class_f1,
    macro_auroc,
    malignant_probability,
    sensitivity_at_specificity,
)
from backend.metrics.thickness import thick_vs_thin, thickness_band_accuracy

#: Age bands (years, upper bound exclusive) for subgroup metrics.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", 0, 30), ("30-49", 30, 50), ("50-69", 50, 70), (">=70", 70, 200),
)


MetricPlan = dict[str, tuple[Callable[..., float], tuple[Any, ...], int]]


def metric_plan(
    y_diag: Any, probs: Any, y_malignant: Any, thickness_mm: Any, thickness_lo: Any, thickness_hi: Any,
    class_offsets: Any = None,
) -> MetricPlan:
    """Each model-card metric as ``name -> (function, its row-aligned arrays, rows it rests on)``.

    The one place that says which function scores which arrays, shared by :func:`card_metrics`
    and :func:`paired_differences`. Arguments as in :func:`card_metrics`.
    """
    y = np.asarray(y_diag, dtype=float)
    y = np.where(np.isnan(y), -1, y).astype(int)
    p = np.asarray(probs, dtype=float)
    ym = np.asarray(y_malignant, dtype=float)
    d = balanced_decision_scores(p, class_offsets)
    mal = malignant_probability(p)
    pred_mm = np.asarray(thickness_mm, dtype=float)
    lo, hi = np.asarray(thickness_lo, dtype=float), np.asarray(thickness_hi, dtype=float)

    n_diag = int((y >= 0).sum())
    n_mal = int(np.isin(ym, (0.0, 1.0)).sum())
    truth, score = thick_vs_thin(pred_mm, lo, hi)
    return {
        "balanced_accuracy": (balanced_accuracy, (y, d), n_diag),
        "auroc_macro": (macro_auroc, (y, p), n_diag),
        "auroc_malignant": (binary_auroc, (ym, mal), n_mal),
        "auroc_melanoma": (partial(class_auroc, k=MELANOMA_INDEX), (y, p), n_diag),
        f"sensitivity_at_{round(TARGET_SPECIFICITY * 100)}_specificity": (sensitivity_at_specificity, (ym, mal), n_mal),
        "ece": (expected_calibration_error, (p, y), n_diag),
        **{f"f1/{name}": (partial(class_f1, k=k), (y, d), int((y == k).sum())) for k, name in enumerate(DIAGNOSES)},
        "thickness_band_accuracy": (thickness_band_accuracy, (pred_mm, lo, hi), int((~np.isnan(lo)).sum())),
        f"thickness_auroc_{THICKNESS_SPLIT_MM:g}mm": (binary_auroc, (truth, score), int(truth.size)),
    }


def _resampled_by(name: str, groups: Any) -> Any:
    """The bootstrap's grouping for a metric: the thin/thick AUROC is over a subset of rows, so by row."""
    return None if name.startswith("thickness_auroc") else groups


def card_metrics(
    y_diag: Any, probs: Any, y_malignant: Any, thickness_mm: Any, thickness_lo: Any, thickness_hi: Any,
    groups: Any = None, n_boot: int = 1000, seed: int = 0, only: tuple[str, ...] | None = None,
    class_offsets: Any = None,
) -> dict[str, dict[str, float]]:
    """Every model-card metric with its 95% bootstrap interval.

    Args:
        y_diag: Diagnosis index per row (``-1`` unknown).
        probs: ``(N, 8)`` calibrated class probabilities.
        y_malignant: 1/0 per row (``-1``/NaN unknown).
        thickness_mm: Predicted thickness per row (mm).
        thickness_lo: Label lower bound (NaN = none).
        thickness_hi: Label upper bound (``inf``/NaN open; ``lo == hi`` exact).
        groups: Patient/lesion id per row for the grouped bootstrap (None: rows).
        n_boot: Bootstrap resamples.
        seed: Resampling seed.
        only: Compute just these metrics (names as in the result); None computes all.
        class_offsets: Calibration offsets: balanced accuracy and F1 then score the class-balanced
            decision (``backend.metrics.calibration.balanced_decision_scores``), not the most probable class.

    Returns:
        ``{metric: {"value", "lo", "hi", "n"}}``; NaN where a metric is undefined on this split.
    """
    plan = metric_plan(y_diag, probs, y_malignant, thickness_mm, thickness_lo, thickness_hi, class_offsets)
    out = {}
    for name, (fn, arrays, n) in plan.items():
        if only is not None and name not in only:
            continue
        point, low, high = bootstrap_ci(fn, *arrays, n_boot=n_boot, seed=seed, groups=_resampled_by(name, groups))
        out[name] = {"value": point, "lo": low, "hi": high, "n": n}
    return out


def _difference(fn: Callable[..., float], n_arrays: int) -> Callable[..., float]:
    """``fn`` on the second half of the arrays minus ``fn`` on the first half (changed minus reference)."""
    def diff(*arrays: Any) -> float:
        return float(fn(*arrays[n_arrays:])) - float(fn(*arrays[:n_arrays]))
    return diff


def paired_differences(reference: MetricPlan, changed: MetricPlan, groups: Any = None, n_boot: int = 1000,
                       seed: int = 0, only: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """How much each metric changes between two predictions of the same rows, with a paired interval.

    Both predictions are scored on the same resampled patients in every bootstrap draw, so the
    interval is that of the change itself. Two intervals read side by side overlap far more than
    the change varies, because most of their width is which patients happened to be sampled, and
    that is common to both.

    Args:
        reference: :func:`metric_plan` of the reference predictions (e.g. the plain test split).
        changed: :func:`metric_plan` of the other predictions of the same rows in the same order.
        groups: Patient/lesion id per row, as in :func:`card_metrics`.
        n_boot: Bootstrap resamples.
        seed: Resampling seed.
        only: Just these metrics; None for every metric both plans have.

    Returns:
        ``{metric: {"value", "lo", "hi", "n"}}`` where ``value`` is changed minus reference.

    Raises:
        ValueError: When the two plans score different numbers of rows.
    """
    out = {}
    for name, (fn, ref_arrays, n) in reference.items():
        if (only is not None and name not in only) or name not in changed:
            continue
        new_arrays = changed[name][1]
        if len(ref_arrays[0]) != len(new_arrays[0]):
            raise ValueError(f"{name}: the reference scores {len(ref_arrays[0])} rows and the changed "
                             f"predictions {len(new_arrays[0])}; a paired change needs the same rows")
        point, low, high = bootstrap_ci(_difference(fn, len(ref_arrays)), *ref_arrays, *new_arrays, n_boot=n_boot,
                                        seed=seed, groups=_resampled_by(name, groups))
        out[name] = {"value": point, "lo": low, "hi": high, "n": n}
    return out


def subgroup_metrics(
    table: pd.DataFrame, y_diag: Any, probs: Any, y_malignant: Any, min_rows: int = 20, class_offsets: Any = None,
    min_per_class: int = 10,
) -> pd.DataFrame:
    """Balanced accuracy and malignant AUROC by sex, age band, anatomical site and source dataset.

    Args:
        table: The evaluated rows (lesion-table layout), row-aligned with the arrays.
        y_diag: Diagnosis index per row.
        probs: ``(N, 8)`` probabilities.
        y_malignant: 1/0 per row.
        min_rows: Balanced accuracy needs at least this many of the group's images with a known
            diagnosis (a group of 176 images of which 2 have one gets none).
        class_offsets: Calibration offsets (balanced accuracy of the class-balanced decision), as in
            :func:`card_metrics`.
        min_per_class: The malignant AUROC needs at least this many malignant and this many benign images.

    Returns:
        Columns ``attribute, group, n, n_diagnosed, n_malignant, balanced_accuracy, auroc_malignant``.
    """
    y = np.asarray(y_diag, dtype=int)
    p = np.asarray(probs, dtype=float)
    d = balanced_decision_scores(p, class_offsets)
    ym = np.asarray(y_malignant, dtype=float)
    mal = malignant_probability(p)
    ages = table["age_approx"].to_numpy(dtype=float, na_value=np.nan)
    age_band = np.full(len(table), "unknown", dtype=object)
    for name, a, b in AGE_BANDS:
        age_band[(ages >= a) & (ages < b)] = name
    attributes = {
        "sex": table["sex"].fillna("unknown").astype(str).to_numpy(),
        "age": age_band,
        "site": table["anatom_site_general"].fillna("unknown").astype(str).to_numpy(),
        "dataset": table["dataset"].fillna("unknown").astype(str).to_numpy(),
    }
    rows = []
    for attribute, values in attributes.items():
        for group in sorted(set(values)):
            mask = values == group
            n_diagnosed = int((y[mask] >= 0).sum())
            n_malignant, n_benign = int((ym[mask] == 1).sum()), int((ym[mask] == 0).sum())
            row = {"attribute": attribute, "group": group, "n": int(mask.sum()), "n_diagnosed": n_diagnosed,
                   "n_malignant": n_malignant, "balanced_accuracy": math.nan, "auroc_malignant": math.nan}
            if n_diagnosed >= min_rows:
                row["balanced_accuracy"] = balanced_accuracy(y[mask], d[mask])
            if min(n_malignant, n_benign) >= min_per_class:
                row["auroc_malignant"] = binary_auroc(ym[mask], mal[mask])
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(entry: dict[str, float]) -> str:
    if entry["value"] is None or math.isnan(entry["value"]):
        return "n/a"
    if math.isnan(entry["lo"]):
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} ({entry['lo']:.3f}-{entry['hi']:.3f})"


def metrics_markdown(metrics: dict[str, dict[str, float]], subgroups: pd.DataFrame | None = None) -> str:
    """The metrics (and subgroup table) as markdown for the model card."""
    lines = ["| metric | value (95% CI) | n |", "| --- | --- | --- |"]
    lines += [f"| {name} | {_fmt(entry)} | {entry['n']} |" for name, entry in metrics.items()]
    if subgroups is not None and not subgroups.empty:
        lines += ["", "| attribute | group | images | with a diagnosis | malignant | balanced accuracy | "
                      "malignant AUROC |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in subgroups.itertuples(index=False):
            ba = "n/a" if math.isnan(r.balanced_accuracy) else f"{r.balanced_accuracy:.3f}"
            au = "n/a" if math.isnan(r.auroc_malignant) else f"{r.auroc_malignant:.3f}"
            diagnosed = getattr(r, "n_diagnosed", r.n)  # cards written before the column: every image
            lines.append(f"| {r.attribute} | {r.group} | {r.n} | {diagnosed} | {r.n_malignant} | {ba} | {au} |")
        lines += ["", "Balanced accuracy is given for groups with at least 20 images with a known diagnosis, "
                      "the malignant AUROC for groups with at least 10 malignant and 10 benign images."]
    return "\n".join(lines) + "\n"
