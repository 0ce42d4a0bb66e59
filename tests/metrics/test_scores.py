"""The evaluation report (compute_metrics) against sklearn, hand-computed values and the training collection."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from backend.data.schema import DIAGNOSES
from backend.evaluation.model_card import card_metrics
from backend.metrics.scores import compute_metrics, metrics_to_frame, write_metrics_csv
from tests.metrics.synthetic import C, run_collection, synthetic


def test_compute_metrics_matches_sklearn(rng):
    y, probs = synthetic(rng)
    pred = probs.argmax(1)
    m = compute_metrics(y, probs)
    assert m["n_diagnosis"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    for k, name in enumerate(DIAGNOSES):
        assert m[f"f1/{name}"] == pytest.approx(f1_score(y == k, pred == k))
        assert m[f"precision/{name}"] == pytest.approx(precision_score(y == k, pred == k))
        assert m[f"recall/{name}"] == pytest.approx(recall_score(y == k, pred == k))
        assert m[f"auroc/{name}"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        assert m[f"support/{name}"] == int((y == k).sum())
    assert m["auroc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    np.testing.assert_array_equal(m["confusion_matrix"], confusion_matrix(y, pred, labels=range(C)))


def test_class_offsets_score_the_class_balanced_decision(rng):
    """With calibration offsets the called class is argmax(log p - b); AUROCs still rank by p."""
    y, probs = synthetic(rng)
    offsets = np.linspace(1.5, -1.5, C)
    shifted = probs * np.exp(offsets)
    shifted /= shifted.sum(1, keepdims=True)  # what BCTS makes of probs: the priors put back
    pred = probs.argmax(1)
    m = compute_metrics(y, shifted, class_offsets=offsets)
    assert (shifted.argmax(1) != pred).any()
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1/MEL"] == pytest.approx(f1_score(y == 0, pred == 0))
    np.testing.assert_array_equal(m["confusion_matrix"], confusion_matrix(y, pred, labels=range(C)))
    assert m["auroc/MEL"] == pytest.approx(roc_auc_score(y == 0, shifted[:, 0]))
    card = card_metrics(y, shifted, np.zeros(len(y)), np.zeros(len(y)), np.full(len(y), np.nan),
                        np.full(len(y), np.nan), n_boot=5, only=("balanced_accuracy",), class_offsets=offsets)
    assert card["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert compute_metrics(y, shifted)["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y, shifted.argmax(1)))


def test_compute_metrics_agrees_with_collection(rng):
    y, probs = synthetic(rng, classes=(0, 1, 2, 4, 6))
    y[:10] = -1
    m = compute_metrics(y, probs)
    out = run_collection(y, probs)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro"):
        assert m[key] == pytest.approx(out[key].item(), abs=1e-5), key
    for k, name in enumerate(DIAGNOSES):
        assert m[f"auroc/{name}"] == pytest.approx(out["auroc"][k].item(), abs=1e-5, nan_ok=True), name


def test_absent_class_gives_nan_with_a_note(rng):
    y, probs = synthetic(rng, classes=(0, 1, 2, 3, 4, 5, 6))
    m = compute_metrics(y, probs)
    assert math.isnan(m["auroc/SCC"]) and math.isnan(m["recall/SCC"]) and math.isnan(m["f1/SCC"])
    assert m["notes"]["f1/SCC"] == "undefined: no SCC row in the truth"
    assert "SCC" in m["notes"]["auroc_macro"] and "SCC" in m["notes"]["balanced_accuracy"]
    expected = np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(7)])
    assert m["auroc_macro"] == pytest.approx(expected)


def test_unknown_rows_excluded_from_diagnosis_but_kept_for_malignant(rng):
    y, probs = synthetic(rng, n=200)
    y_mal = np.isin(y, [0, 2, 7]).astype(float)
    y_diag = y.copy()
    y_diag[:50] = -1  # e.g. UNK rows: benign or malignant is still known
    m = compute_metrics(y_diag, probs, y_true_malignant=y_mal)
    ref = compute_metrics(y[50:], probs[50:])
    assert m["n_diagnosis"] == 150
    assert m["balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])
    score = probs[:, [0, 2, 7]].sum(1)
    assert m["n_malignant"] + m["n_benign"] == 200
    assert m["auroc_malignant"] == pytest.approx(roc_auc_score(y_mal, score))


def test_malignant_threshold_metrics_hand_computed():
    y_mal = np.array([1, 1, 1, 0, 0, 0, 0, np.nan])
    score = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05, 0.99])
    probs = np.full((8, C), 1 / C)
    m = compute_metrics(np.full(8, -1), probs, y_true_malignant=y_mal, malignant_prob=score, threshold=0.5)
    assert m["n_malignant"] == 3 and m["n_benign"] == 4  # the NaN row is left out
    assert m["sensitivity_malignant"] == pytest.approx(2 / 3)
    assert m["specificity_malignant"] == pytest.approx(3 / 4)
    assert m["auroc_malignant"] == pytest.approx(roc_auc_score(y_mal[:7], score[:7]))
    # specificity >= 80% among 4 benigns means no false positive: threshold above 0.7 -> only 0.9 caught
    assert m["sensitivity_at_spec80_malignant"] == pytest.approx(1 / 3)
    assert m["n_diagnosis"] == 0 and "n_diagnosis" in m["notes"]


def test_thickness_metrics_hand_computed():
    #            exact 1.0 exact 2.0 in situ  [0,0.76] [0.76,1.5] [1.5,inf) unlabelled straddle [0.5,1]
    lo = np.array([1.0, 2.0, 0.0, 0.0, 0.76, 1.5, np.nan, 0.5])
    hi = np.array([1.0, 2.0, 0.0, 0.76, 1.5, np.inf, np.nan, 1.0])
    pred = np.array([1.5, 1.0, 0.2, 0.5, 2.0, 3.0, 9.9, 0.7])
    probs = np.full((8, C), 1 / C)
    m = compute_metrics(np.zeros(8), probs, thickness_pred_mm=pred, thickness_lo=lo, thickness_hi=hi)
    assert m["n_thickness_exact"] == 3 and m["n_thickness_interval"] == 4
    assert m["thickness_mae_mm"] == pytest.approx((0.5 + 1.0 + 0.2) / 3)
    assert m["thickness_rmse_mm"] == pytest.approx(math.sqrt((0.25 + 1.0 + 0.04) / 3))
    assert m["thickness_mape"] == pytest.approx((0.5 / 1.0 + 1.0 / 2.0) / 2)  # in situ excluded
    assert "1 in situ" in m["notes"]["thickness_mape"]
    # intervals: 0.5 in [0,0.76] yes, 2.0 in [0.76,1.5] no, 3.0 in [1.5,inf) yes, 0.7 in [0.5,1] yes
    assert m["thickness_interval_accuracy"] == pytest.approx(3 / 4)
    # split at 0.76: thick = rows 0,1,4,5 ; thin = rows 2,3 ; row 7 straddles
    assert m["n_thickness_split0.76_thick"] == 4 and m["n_thickness_split0.76_thin"] == 2
    # calls: 1.5 T ok, 1.0 T ok, 0.2 thin ok, 0.5 thin ok, 2.0 T ok, 3.0 T ok
    assert m["thickness_split0.76_accuracy"] == pytest.approx(1.0)
    assert m["thickness_split0.76_auroc"] == pytest.approx(1.0)
    assert "1 labels straddling" in m["notes"]["thickness_split0.76_accuracy"]


def test_thickness_open_bound_as_nan_hi_and_no_labels():
    probs = np.full((3, C), 1 / C)
    m = compute_metrics(
        np.zeros(3),
        probs,
        thickness_pred_mm=[0.5, 2.0, 1.0],
        thickness_lo=[1.5, 1.5, np.nan],
        thickness_hi=[np.nan, np.nan, np.nan],
    )
    assert m["thickness_interval_accuracy"] == pytest.approx(0.5)
    assert math.isnan(m["thickness_mae_mm"])  # no exact label
    assert math.isnan(m["thickness_split0.76_auroc"])  # only thick rows


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="probs must have shape"):
        compute_metrics([0, 1], np.ones((2, 3)))
    with pytest.raises(ValueError, match="y_true_malignant has 1 values"):
        compute_metrics([0, 1], np.ones((2, C)) / C, y_true_malignant=[1])
    with pytest.raises(ValueError, match="y_true_diag values"):
        compute_metrics([0, 9], np.ones((2, C)) / C)


def test_metrics_frame_and_csv(rng, tmp_path):
    y, probs = synthetic(rng, classes=(0, 1, 2, 3, 4, 5, 6))
    m = compute_metrics(y, probs, y_true_malignant=np.isin(y, [0, 2]).astype(int))
    frame = metrics_to_frame(m)
    assert list(frame.columns) == ["metric", "value", "note"]
    assert "confusion_matrix" not in set(frame["metric"]) and "notes" not in set(frame["metric"])
    row = frame.set_index("metric").loc["auroc_macro"]
    assert row["value"] == pytest.approx(m["auroc_macro"]) and "SCC" in row["note"]
    path = write_metrics_csv(m, tmp_path / "out" / "metrics.csv")
    back = pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert len(back) == len(frame)
    assert back.set_index("metric").loc["f1/MEL", "value"] == pytest.approx(m["f1/MEL"])
