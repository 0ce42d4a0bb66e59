"""The training collection (torchmetrics) against sklearn on known inputs."""

from __future__ import annotations

import math
import pickle

import numpy as np
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

from backend.metrics.collection import build_auxiliary_metrics, build_classification_metrics
from tests.metrics.synthetic import C, run_collection, synthetic


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
    """DDP spawn and ``MetricCollection.clone`` copy the metrics: the subclasses must pickle."""
    y, probs = synthetic(rng, n=60)
    metrics = build_classification_metrics(C).clone(prefix="val/")
    metrics.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(y))
    restored = pickle.loads(pickle.dumps(metrics))
    expected = balanced_accuracy_score(y, probs.argmax(1))
    assert restored["val/balanced_accuracy"].compute().item() == pytest.approx(expected)
    assert set(restored.keys()) >= {"val/auroc_macro", "val/f1", "val/confusion_matrix"}


def test_auxiliary_metrics_take_a_prefix_and_match_sklearn(rng):
    y = rng.integers(0, 2, 50)
    score = rng.uniform(size=50)
    metrics = build_auxiliary_metrics("val/")
    metrics["val/auroc_malignant"].update(torch.tensor(score), torch.tensor(y))
    metrics["val/thickness_mae_mm"].update(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0]))
    out = metrics.compute()
    assert out["val/auroc_malignant"].item() == pytest.approx(roc_auc_score(y, score), abs=1e-6)
    assert out["val/thickness_mae_mm"].item() == pytest.approx(0.75)


def test_malignant_auroc_leaves_out_rows_of_unknown_label():
    metrics = build_auxiliary_metrics("val/")
    auroc = metrics["auroc_malignant"]
    auroc.update(torch.tensor([0.9, 0.2, 0.95]), torch.tensor([1, 0, -1]))  # the 0.95 row's label is unknown
    assert float(auroc.compute()) == pytest.approx(1.0)  # counted as benign it would be 0.5
