"""Metrics against sklearn on known inputs: the torchmetrics collection, compute_metrics, bootstrap CIs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
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
from backend.metrics.bootstrap import bootstrap_ci
from backend.metrics.scores import (
    build_classification_metrics,
    compute_metrics,
    metrics_to_frame,
    sensitivity_at_specificity,
    write_metrics_csv,
)

C = len(DIAGNOSES)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic(rng: np.random.Generator, n: int = 240, classes: tuple[int, ...] = tuple(range(C))):
    """Labels from ``classes`` and informative-but-noisy probabilities."""
    y = rng.choice(classes, size=n)
    logits = rng.normal(0, 1.0, (n, C))
    logits[np.arange(n), y] += 1.5
    return y, softmax(logits)


def run_collection(y: np.ndarray, probs: np.ndarray, chunks: int = 3) -> dict[str, torch.Tensor]:
    metrics = build_classification_metrics(C)
    for yc, pc in zip(np.array_split(y, chunks), np.array_split(probs, chunks), strict=True):
        metrics.update(torch.tensor(pc, dtype=torch.float32), torch.tensor(yc))
    return metrics.compute()


# --------------------------------------------------------------------------- torchmetrics collection


def test_collection_matches_sklearn(rng):
    y, probs = synthetic(rng)
    pred = probs.argmax(1)
    out = run_collection(y, probs)
    assert out["accuracy"].item() == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert out["balanced_accuracy"].item() == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-6)
    assert out["f1_macro"].item() == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert out["f1_weighted"].item() == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-6)
    np.testing.assert_allclose(out["f1"].numpy(), f1_score(y, pred, average=None), atol=1e-6)
    np.testing.assert_allclose(out["precision"].numpy(), precision_score(y, pred, average=None), atol=1e-6)
    np.testing.assert_allclose(out["recall"].numpy(), recall_score(y, pred, average=None), atol=1e-6)
    sk_auc = [roc_auc_score(y == k, probs[:, k]) for k in range(C)]
    np.testing.assert_allclose(out["auroc"].numpy(), sk_auc, atol=1e-5)
    assert out["auroc_macro"].item() == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-5)
    np.testing.assert_array_equal(out["confusion_matrix"].numpy(), confusion_matrix(y, pred, labels=range(C)))


def test_collection_absent_class_is_excluded_like_sklearn(rng):
    # SCC (index 7) never occurs in the truth but is sometimes predicted.
    y, probs = synthetic(rng, classes=tuple(range(C - 1)))
    probs[:20, 7] = 5.0
    probs = probs / probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    assert (pred == 7).sum() >= 20
    with pytest.warns(UserWarning):  # sklearn warns about the predicted-but-absent class
        expected_bacc = balanced_accuracy_score(y, pred)
    out = run_collection(y, probs)
    assert out["balanced_accuracy"].item() == pytest.approx(expected_bacc, abs=1e-6)
    # torchmetrics' plain macro recall would have counted SCC as recall 0
    assert out["balanced_accuracy"].item() > recall_score(y, pred, average="macro", labels=range(C), zero_division=0)
    assert math.isnan(out["auroc"][7].item())
    sk_auc = np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(C - 1)])
    assert out["auroc_macro"].item() == pytest.approx(sk_auc, abs=1e-5)
    assert out["f1_macro"].item() == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)


def test_collection_ignores_minus_one_targets(rng):
    y, probs = synthetic(rng, n=120)
    y_masked = y.copy()
    y_masked[::4] = -1
    keep = y_masked >= 0
    with_unknown = run_collection(y_masked, probs)
    known_only = run_collection(y[keep], probs[keep])
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro"):
        assert with_unknown[key].item() == pytest.approx(known_only[key].item(), abs=1e-6), key
    assert with_unknown["confusion_matrix"].sum().item() == keep.sum()


def test_collection_pickles_and_clones_with_prefix(rng):
    """DDP spawn and ``MetricCollection.clone`` copy the metrics: the lazily built classes must pickle."""
    y, probs = synthetic(rng, n=60)
    metrics = build_classification_metrics(C).clone(prefix="val/")
    metrics.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(y))
    restored = pickle.loads(pickle.dumps(metrics))
    expected = balanced_accuracy_score(y, probs.argmax(1))
    assert restored["val/balanced_accuracy"].compute().item() == pytest.approx(expected)
    assert set(restored.keys()) >= {"val/auroc_macro", "val/f1", "val/confusion_matrix"}


# --------------------------------------------------------------------------- compute_metrics


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
    assert math.isnan(m["auroc/SCC"]) and math.isnan(m["recall/SCC"])
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


def test_sensitivity_at_specificity_perfect_and_undefined():
    assert sensitivity_at_specificity(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert math.isnan(sensitivity_at_specificity(np.array([1, 1]), np.array([0.1, 0.2])))


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


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_point_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, 50)
    large = rng.normal(1.0, 1.0, 2000)
    p1, lo1, hi1 = bootstrap_ci(np.mean, small, n_boot=300)
    p2, lo2, hi2 = bootstrap_ci(np.mean, large, n_boot=300)
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert (hi2 - lo2) < 0.5 * (hi1 - lo1)
    # percentile CI of a mean ~ +-1.96 sd/sqrt(n)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.25)
    assert bootstrap_ci(np.mean, small, n_boot=300) == (p1, lo1, hi1)  # seeded


def test_bootstrap_ci_auroc_is_nan_safe_and_groups_widen():
    rng = np.random.default_rng(2)
    y = np.array([1] + [0] * 29)  # one positive: many resamples have no positive -> skipped
    score = rng.uniform(size=30)
    point, lo, hi = bootstrap_ci(roc_auc_score, y, score, n_boot=200)
    assert point == pytest.approx(roc_auc_score(y, score)) and lo <= hi
    assert bootstrap_ci(roc_auc_score, np.zeros(5), score[:5], n_boot=20)[1:] == pytest.approx(
        (math.nan, math.nan), nan_ok=True
    )
    # 20 patients x 10 near-identical images: patient-level resampling gives a much wider CI
    patient_effect = np.repeat(rng.normal(0, 1, 20), 10)
    values = patient_effect + rng.normal(0, 0.05, 200)
    groups = np.repeat(np.arange(20), 10)
    _, lo_r, hi_r = bootstrap_ci(np.mean, values, n_boot=300)
    _, lo_g, hi_g = bootstrap_ci(np.mean, values, n_boot=300, groups=groups)
    assert (hi_g - lo_g) > 2 * (hi_r - lo_r)


def test_bootstrap_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(lambda a, b: 0.0, np.zeros(3), np.zeros(4))
