"""Model-card metrics: bootstrap intervals, agreement with compute_metrics, subgroups, markdown."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from backend.evaluation.model_card import card_metrics, metrics_markdown, subgroup_metrics
from backend.metrics.scores import compute_metrics


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    n = 240
    y = rng.integers(0, 8, n)
    logits = rng.normal(0, 1, (n, 8))
    logits[np.arange(n), y] += 1.5  # informative but imperfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y_mal = np.isin(y, [0, 2, 7]).astype(float)
    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    mel = np.flatnonzero(y == 0)
    lo[mel[::2]] = hi[mel[::2]] = rng.uniform(0.1, 3.0, len(mel[::2]))  # exact
    lo[mel[1::2]], hi[mel[1::2]] = 0.76, 1.5  # band
    pred_mm = np.where(np.isnan(lo), 0.5, np.nan_to_num(lo) + rng.normal(0, 0.2, n)).clip(0)
    return y, probs, y_mal, pred_mm, lo, hi


def test_points_agree_with_compute_metrics_and_intervals_cover_them(split):
    y, probs, y_mal, pred_mm, lo, hi = split
    card = card_metrics(y, probs, y_mal, pred_mm, lo, hi, n_boot=40)
    ref = compute_metrics(y, probs, y_true_malignant=y_mal, thickness_pred_mm=pred_mm, thickness_lo=lo,
                          thickness_hi=hi)
    assert card["balanced_accuracy"]["value"] == pytest.approx(ref["balanced_accuracy"])
    assert card["auroc_macro"]["value"] == pytest.approx(ref["auroc_macro"])
    assert card["auroc_malignant"]["value"] == pytest.approx(ref["auroc_malignant"])
    assert card["sensitivity_at_80_specificity"]["value"] == pytest.approx(ref["sensitivity_at_spec80_malignant"])
    assert card["f1/MEL"]["value"] == pytest.approx(ref["f1/MEL"])
    assert card["thickness_auroc_0.76mm"]["value"] == pytest.approx(ref["thickness_split0.76_auroc"])
    for name in ("balanced_accuracy", "auroc_malignant", "ece", "f1/NV"):
        entry = card[name]
        assert entry["lo"] <= entry["value"] <= entry["hi"] and entry["hi"] - entry["lo"] > 0, name
    assert card["balanced_accuracy"]["n"] == len(y)


def test_grouped_bootstrap_widens_intervals_for_correlated_rows(split):
    y, probs, y_mal, pred_mm, lo, hi = split
    # Every row duplicated 4 times: row resampling sees 4x the evidence, patient resampling does not.
    rep = [np.repeat(a, 4, axis=0) for a in (y, probs, y_mal, pred_mm, lo, hi)]
    patients = np.repeat(np.arange(len(y)), 4)
    rows = card_metrics(*rep, n_boot=150, only=("auroc_malignant",))["auroc_malignant"]
    grouped = card_metrics(*rep, groups=patients, n_boot=150, only=("auroc_malignant",))["auroc_malignant"]
    assert set(card_metrics(*rep, n_boot=5, only=("ece",))) == {"ece"}
    assert (grouped["hi"] - grouped["lo"]) > 1.5 * (rows["hi"] - rows["lo"])


def test_band_accuracy_counts_exact_labels_by_reporting_band():
    from backend.evaluation.model_card import _band_accuracy

    pred = np.array([0.5, 1.5, 0.9, 3.0])
    lo = np.array([0.6, 1.9, 0.76, np.nan])
    hi = np.array([0.6, 1.9, 1.5, np.nan])
    # 0.5 and 0.6 share "<0.8 mm"; 1.5 and 1.9 share "1-2 mm"; 0.9 lies in the band [0.76, 1.5].
    assert _band_accuracy(pred, lo, hi) == pytest.approx(1.0)
    assert _band_accuracy(np.array([1.0, 0.5, 2.0]), lo[:3], hi[:3]) == pytest.approx(0.0)


def test_subgroups_and_markdown(split):
    y, probs, y_mal, *_ = split
    n = len(y)
    table = pd.DataFrame({
        "age_approx": np.where(np.arange(n) % 5 == 0, np.nan, 20 + np.arange(n) % 60),
        "sex": np.where(np.arange(n) % 2 == 0, "male", "female"),
        "anatom_site_general": ["head/neck"] * (n - 10) + [None] * 10,
        "dataset": ["A"] * (n // 2) + ["B"] * (n - n // 2),
    })
    sub = subgroup_metrics(table, y, probs, y_mal, min_rows=20)
    male = sub[(sub["attribute"] == "sex") & (sub["group"] == "male")].iloc[0]
    mask = table["sex"].to_numpy() == "male"
    ref = compute_metrics(y[mask], probs[mask], y_true_malignant=y_mal[mask])
    assert male["n"] == mask.sum() and male["auroc_malignant"] == pytest.approx(ref["auroc_malignant"])
    small = sub[(sub["attribute"] == "site") & (sub["group"] == "unknown")].iloc[0]
    assert small["n"] == 10 and math.isnan(small["balanced_accuracy"])
    assert set(sub[sub["attribute"] == "age"]["group"]) >= {"<30", "unknown"}
    text = metrics_markdown(card_metrics(y, probs, y_mal, np.zeros(n), np.full(n, np.nan), np.full(n, np.nan),
                                         n_boot=10), sub)
    assert "| balanced_accuracy |" in text and "| sex | male |" in text and "n/a" in text
