"""Evaluation figures are written as valid, non-trivial PNGs and render to RGB arrays."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
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
    fig = confusion_matrix_figure(cm, DIAGNOSES)
    # Coloured by the share of each true class (row), on a fixed 0-1 scale; the empty row shows zeros.
    recall = np.zeros((8, 8))
    for i in range(8):
        if cm[i].sum():
            recall[i] = cm[i] / cm[i].sum()
    assert cm.sum(axis=0).min() > 0 and not np.allclose(recall, cm / cm.sum(axis=0))  # rows, not columns
    (picture,) = fig.axes[0].images
    np.testing.assert_allclose(np.asarray(picture.get_array()), recall, atol=1e-12)
    assert picture.get_clim() == (0.0, 1.0)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in fig.axes[0].texts}
    assert len(cells) == 64
    for (i, j), text in cells.items():
        count, share = text.split("\n")
        assert int(count) == cm[i, j] and abs(int(share.removesuffix("%")) - 100 * recall[i, j]) <= 0.5 + 1e-9
    path = save_png(fig, tmp_path / "figs" / "cm.png")
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

    only_exact = thickness_figure([0.5, 1.2], [0.4, 1.2], [0.4, 1.2])
    ax = only_exact.axes[0]
    (points,) = ax.collections  # one scatter of the exact labels; no interval bars
    np.testing.assert_allclose(points.get_offsets(), [[0.4, 0.5], [1.2, 1.2]])  # at (true, predicted)
    np.testing.assert_allclose(points.get_facecolors()[:, :3], [to_rgb("crimson"), to_rgb("seagreen")])
    assert ax.get_title() == "Breslow thickness: 50% of predictions inside the label"
    nothing = thickness_figure([0.5], [float("nan")], [float("nan")])
    assert nothing.axes[0].get_title() == "Breslow thickness" and not nothing.axes[0].collections
