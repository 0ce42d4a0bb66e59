"""Evaluation figures are written as valid, non-trivial PNGs and render to RGB arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.data.schema import DIAGNOSES
from backend.metrics.plots import (
    confusion_matrix_figure,
    confusion_matrix_image,
    figure_to_array,
    roc_curves_figure,
    save_png,
    thickness_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L"))
    assert arr.std() > 5  # not a blank canvas


def test_confusion_matrix_png_and_array(tmp_path, rng):
    cm = rng.integers(0, 30, (8, 8))
    cm[3] = 0  # a class with no truth row must not break the normalisation
    path = save_png(confusion_matrix_figure(cm, DIAGNOSES), tmp_path / "figs" / "cm.png")
    assert_valid_png(path)
    image = confusion_matrix_image(cm, DIAGNOSES)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 5
    with pytest.raises(ValueError, match="confusion matrix must be"):
        confusion_matrix_figure(np.zeros((3, 3)), DIAGNOSES)


def test_roc_png_with_malignant_panel_and_missing_class(tmp_path, rng):
    n = 200
    y = rng.integers(0, 7, n)  # SCC absent: its curve is skipped, not a crash
    probs = rng.dirichlet(np.ones(8), n)
    probs[np.arange(n), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    y_mal = np.isin(y, [0, 2]).astype(float)
    y_diag = y.copy()
    y_diag[:20] = -1
    fig = roc_curves_figure(y_diag, probs, DIAGNOSES, y_true_malignant=y_mal)
    assert len(fig.axes) == 2
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("MEL (AUC") for label in labels)
    assert not any(label.startswith("SCC") for label in labels)
    assert fig.axes[1].get_lines()[0].get_label().startswith("malignant (AUC")
    assert_valid_png(save_png(fig, tmp_path / "roc.png"))
    assert len(roc_curves_figure(y, probs).axes) == 1


def test_thickness_png_exact_points_and_interval_bars(tmp_path):
    lo = np.array([0.0, 0.0, 0.76, 1.5, 1.2, np.nan])
    hi = np.array([0.0, 0.76, 1.5, np.inf, 1.2, np.nan])
    pred = np.array([0.1, 0.5, 2.0, 3.0, 1.0, 5.0])
    fig = thickness_figure(pred, lo, hi)
    ax = fig.axes[0]
    assert "40% of predictions inside" in ax.get_title()
    assert ax.collections[0].get_offsets().shape[0] == 2  # exact labels as points
    assert len(ax.collections[1].get_segments()) == 3  # interval labels as bars
    assert_valid_png(save_png(fig, tmp_path / "thickness.png"))
    with pytest.raises(ValueError, match="differ in length"):
        thickness_figure(pred, lo[:2], hi)


def test_figure_to_array_shape_matches_figure_size():
    fig = thickness_figure([0.5], [0.0], [0.76])
    arr = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert arr.shape == (round(height), round(width), 3)


def test_thickness_figure_with_only_exact_or_no_labels():

    only_exact = thickness_figure([0.5, 1.0], [0.4, 1.2], [0.4, 1.2])
    assert len(only_exact.axes[0].collections) >= 1
    nothing = thickness_figure([0.5], [float("nan")], [float("nan")])
    assert nothing.axes[0].get_title() == "Breslow thickness"
