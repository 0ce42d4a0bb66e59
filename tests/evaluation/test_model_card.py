"""Model-card metrics: against independent sklearn calls and compute_metrics, bootstrap intervals, subgroups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve

from backend.data.schema import DIAGNOSES, THICKNESS_BANDS
from backend.evaluation.card_sections import changes_markdown
from backend.evaluation.model_card import (
    card_metrics,
    metric_plan,
    metrics_markdown,
    paired_differences,
    subgroup_metrics,
)
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


def test_card_figures_match_independent_sklearn_calls(split):
    y, probs, y_mal, pred_mm, lo, hi = split
    y = y.astype(float)
    y[:12] = -1  # UNK rows: no diagnosis, malignancy still known
    y_mal[12:20] = np.nan  # no benign/malignant label
    card = card_metrics(y, probs, y_mal, pred_mm, lo, hi, n_boot=5)
    known, pred = y >= 0, probs.argmax(1)
    yk, pk = y[known].astype(int), pred[known]
    mal_rows = ~np.isnan(y_mal)
    malignant = probs[:, [0, 2, 7]].sum(1)
    expected = {
        "balanced_accuracy": balanced_accuracy_score(yk, pk),
        "auroc_macro": roc_auc_score(yk, probs[known], multi_class="ovr", average="macro"),
        "auroc_malignant": roc_auc_score(y_mal[mal_rows], malignant[mal_rows]),
        "auroc_melanoma": roc_auc_score(yk == 0, probs[known, 0]),
        **{f"f1/{name}": f1_score(yk == k, pk == k) for k, name in enumerate(DIAGNOSES)},
    }
    fpr, tpr, _ = roc_curve(y_mal[mal_rows], malignant[mal_rows])
    expected["sensitivity_at_80_specificity"] = tpr[fpr <= 0.2 + 1e-12].max()
    # Top-label ECE, 15 equal-width bins, written out independently.
    conf, correct = probs[known].max(1), (pk == yk).astype(float)
    bins = np.minimum((conf * 15).astype(int), 14)
    expected["ece"] = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
                          for b in range(15) if (bins == b).any())
    # Thin (hi <= 0.76) vs thick (lo >= 0.76): exact labels decide, the [0.76, 1.5] bands are thick.
    decided = ~np.isnan(lo)
    expected["thickness_auroc_0.76mm"] = roc_auc_score(lo[decided] >= 0.76, pred_mm[decided])
    # Band accuracy: a band label needs the prediction inside it, an exact label the same reporting band.
    band = [next(i for i, (_, a, b) in enumerate(THICKNESS_BANDS) if a <= max(x, 0) < b) for x in pred_mm]
    label_band = [next((i for i, (_, a, b) in enumerate(THICKNESS_BANDS) if a <= x < b), -1) for x in lo]
    hits = [band[i] == label_band[i] if lo[i] == hi[i] else lo[i] <= pred_mm[i] <= hi[i]
            for i in np.flatnonzero(decided)]
    expected["thickness_band_accuracy"] = np.mean(hits)
    for name, value in expected.items():
        assert card[name]["value"] == pytest.approx(value, abs=1e-12), name
    assert card["balanced_accuracy"]["n"] == known.sum() and card["auroc_malignant"]["n"] == mal_rows.sum()
    assert card["f1/MEL"]["n"] == (y == 0).sum()


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


def test_paired_change_is_the_difference_and_narrower_than_the_two_intervals(split):
    y, probs, y_mal, pred_mm, lo, hi = split
    rng = np.random.default_rng(1)
    # The same rows predicted a little worse: the changed probabilities mix in noise.
    noisy = 0.8 * probs + 0.2 * rng.dirichlet(np.ones(8), len(y))
    patients = np.arange(len(y)) // 2
    ref, new = metric_plan(y, probs, y_mal, pred_mm, lo, hi), metric_plan(y, noisy, y_mal, pred_mm, lo, hi)
    only = ("auroc_malignant", "balanced_accuracy")
    change = paired_differences(ref, new, groups=patients, n_boot=200, only=only)
    assert set(change) == set(only)
    for name in only:
        a = card_metrics(y, probs, y_mal, pred_mm, lo, hi, groups=patients, n_boot=200, only=(name,))[name]
        b = card_metrics(y, noisy, y_mal, pred_mm, lo, hi, groups=patients, n_boot=200, only=(name,))[name]
        assert change[name]["value"] == pytest.approx(b["value"] - a["value"], abs=1e-12)
        assert change[name]["lo"] <= change[name]["value"] <= change[name]["hi"]
        # Pairing removes the patient-sampling variation both versions share.
        assert change[name]["hi"] - change[name]["lo"] < 0.75 * (b["hi"] - b["lo"])
    assert change["auroc_malignant"]["value"] < 0
    # Identical predictions change by exactly nothing in every draw.
    same = paired_differences(ref, ref, groups=patients, n_boot=20, only=only)["balanced_accuracy"]
    assert same["value"] == same["lo"] == same["hi"] == 0
    with pytest.raises(ValueError, match="balanced_accuracy: the reference scores 240 rows"):
        paired_differences(ref, metric_plan(y[:10], probs[:10], y_mal[:10], pred_mm[:10], lo[:10], hi[:10]),
                           n_boot=5, only=("balanced_accuracy",))
    text = "\n".join(changes_markdown({"bordered": change}, "model v1"))
    ba = change["balanced_accuracy"]
    assert f"| bordered | {change['auroc_malignant']['value']:+.3f}" in text
    assert f"{ba['value']:+.3f} ({ba['lo']:+.3f} to {ba['hi']:+.3f})" in text
    assert "cannot tell from chance" in text and changes_markdown({}, "model v1") == []


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
    assert "| attribute | group | images | with a diagnosis | malignant |" in text


def test_subgroup_figures_need_enough_diagnosed_malignant_and_benign_images(split):
    y, probs, y_mal, *_ = split
    n = len(y)
    y = y.copy()
    y[: n - 5] = -1  # only 5 images of the group have a diagnosis
    y_mal = y_mal.copy()
    y_mal[:] = 0
    y_mal[:4] = 1  # 4 malignant: too few to rank
    table = pd.DataFrame({"age_approx": np.full(n, 40.0), "sex": ["male"] * n, "anatom_site_general": ["torso"] * n,
                          "dataset": ["A"] * n})
    row = subgroup_metrics(table, y, probs, y_mal, min_rows=20, min_per_class=10).iloc[0]
    assert row["n"] == n and row["n_diagnosed"] == 5 and row["n_malignant"] == 4
    assert math.isnan(row["balanced_accuracy"]) and math.isnan(row["auroc_malignant"])
    y_mal[:10] = 1
    assert not math.isnan(subgroup_metrics(table, y, probs, y_mal, min_per_class=10).iloc[0]["auroc_malignant"])
