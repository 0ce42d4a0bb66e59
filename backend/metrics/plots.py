"""Evaluation figures: confusion matrix, ROC curves and predicted-vs-true Breslow thickness.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure`` on the Agg canvas),
never ``pyplot``: no display, no global figure state, safe in worker processes and in Lightning
callbacks. Builders return a ``Figure``; :func:`save_png` writes one and :func:`figure_to_array`
turns one into an RGB array for ``SummaryWriter.add_image(..., dataformats="HWC")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_curve

from backend.data.schema import DIAGNOSES, THICKNESS_SPLIT_MM
from backend.metrics.classification import binary_auroc, malignant_probability

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an RGB ``uint8`` array of shape ``(H, W, 3)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def confusion_matrix_figure(cm: Any, class_names: Sequence[str] = DIAGNOSES, title: str = "Confusion matrix") -> Figure:
    """Confusion matrix coloured by row-normalised recall, each cell labelled with count and %.

    Args:
        cm: Counts, shape ``(C, C)``, rows = truth, columns = prediction.
        class_names: Row/column labels.
        title: Axes title.
    """
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix must be ({len(class_names)}, {len(class_names)}), got {cm.shape}")
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(support > 0, cm / support, 0.0)
    size = 1.2 + 0.62 * len(class_names)
    fig = _new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=7, color=colour)
    return fig


def confusion_matrix_image(cm: Any, class_names: Sequence[str] = DIAGNOSES) -> np.ndarray:
    """The confusion matrix figure as an RGB ``(H, W, 3)`` array, for TensorBoard."""
    return figure_to_array(confusion_matrix_figure(cm, class_names))


def roc_curves_figure(
    y_true_diag: Any,
    probs: Any,
    class_names: Sequence[str] = DIAGNOSES,
    y_true_malignant: Any = None,
    malignant_prob: Any = None,
) -> Figure:
    """One-vs-rest ROC curve per diagnosis, plus the benign/malignant ROC in a second panel.

    Args:
        y_true_diag: Diagnosis index per row, ``-1`` where unknown (left out of the per-class panel).
        probs: Probabilities, shape ``(N, C)``.
        class_names: Names of the probability columns.
        y_true_malignant: 1/0 per row (NaN or -1 unknown); None omits the malignant panel.
        malignant_prob: Malignant score per row; None sums the malignant diagnoses' probabilities.
    """
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y_true_diag, dtype=float).reshape(-1)
    known = ~np.isnan(y) & (y >= 0)
    y_known, p_known = y[known].astype(int), probs[known]
    panels = 1 if y_true_malignant is None else 2
    fig = _new_figure(5.0 * panels, 4.6)
    ax = fig.add_subplot(1, panels, 1)
    for k, name in enumerate(class_names):
        positive = y_known == k
        if positive.all() or not positive.any():
            continue  # ROC undefined without positives and negatives
        fpr, tpr, _ = roc_curve(positive, p_known[:, k])
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUC {binary_auroc(positive, p_known[:, k]):.3f})")
    _finish_roc_axes(ax, "Diagnosis (one vs rest)")

    if y_true_malignant is not None:
        y_mal = np.asarray(y_true_malignant, dtype=float).reshape(-1)
        if malignant_prob is None:
            score = malignant_probability(probs, class_names)
        else:
            score = np.asarray(malignant_prob, dtype=float).reshape(-1)
        ok = np.isin(y_mal, (0.0, 1.0))
        ax2 = fig.add_subplot(1, panels, 2)
        if ok.any() and 0 < y_mal[ok].sum() < ok.sum():
            fpr, tpr, _ = roc_curve(y_mal[ok], score[ok])
            auc = binary_auroc(y_mal[ok], score[ok])
            ax2.plot(fpr, tpr, lw=1.8, color="crimson", label=f"malignant (AUC {auc:.3f})")
        _finish_roc_axes(ax2, "Benign vs malignant")
    return fig


def _finish_roc_axes(ax: Any, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)


def thickness_figure(pred_mm: Any, lo: Any, hi: Any, split_mm: float = THICKNESS_SPLIT_MM) -> Figure:
    """Predicted vs true Breslow thickness.

    Exact labels (``lo == hi``) are points at ``(true, predicted)``; interval labels are horizontal
    bars from ``lo`` to ``hi`` at the predicted height (an open upper bound ends in an arrow at the
    plot edge). Green: prediction inside the label interval; red: outside. Rows with NaN ``lo`` or
    prediction are left out.

    Args:
        pred_mm: Predicted thickness in mm per row.
        lo: Label lower bound in mm (NaN = unlabelled).
        hi: Label upper bound in mm (``inf``/NaN = open, ``lo == hi`` = exact).
        split_mm: Thin/thick boundary drawn as dashed lines.
    """
    pred = np.asarray(pred_mm, dtype=float).reshape(-1)
    lo = np.asarray(lo, dtype=float).reshape(-1)
    hi = np.asarray(hi, dtype=float).reshape(-1)
    if not pred.shape == lo.shape == hi.shape:
        raise ValueError(f"pred_mm, lo and hi differ in length: {pred.shape[0]}, {lo.shape[0]}, {hi.shape[0]}")
    ok = ~np.isnan(lo) & ~np.isnan(pred)
    pred, lo, hi = pred[ok], lo[ok], np.where(np.isnan(hi[ok]), np.inf, hi[ok])
    finite = np.concatenate([pred, lo, hi[np.isfinite(hi)], [split_mm * 2]])
    top = max(1.0, 1.15 * float(finite.max()))
    inside = (pred >= lo) & (pred <= hi)
    colours = np.where(inside, "seagreen", "crimson")

    fig = _new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    exact = lo == hi
    interval = ~exact
    if exact.any():  # an empty collection with a label breaks matplotlib's legend
        ax.scatter(lo[exact], pred[exact], c=colours[exact], s=18, zorder=3,
                   label=f"exact label (n={int(exact.sum())})")
    if interval.any():
        ends = np.minimum(hi[interval], top)
        ax.hlines(pred[interval], lo[interval], ends, colors=colours[interval], lw=1.2, alpha=0.8,
                  label=f"interval label (n={int(interval.sum())})")
        ax.scatter(lo[interval], pred[interval], c=colours[interval], marker="|", s=40)
    open_end = interval & ~np.isfinite(hi)
    if open_end.any():
        ax.scatter(np.full(int(open_end.sum()), top), pred[open_end], c=colours[open_end], marker=">", s=22)
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=0.8, label="predicted = true")
    ax.axvline(split_mm, ls=":", color="black", lw=0.8)
    ax.axhline(split_mm, ls=":", color="black", lw=0.8, label=f"{split_mm:g} mm split")
    ax.set_xlim(-0.02 * top, top * 1.02)
    ax.set_ylim(-0.02 * top, max(top, 1.15 * float(pred.max(initial=0.0))))
    ax.set_xlabel("true Breslow thickness (mm)")
    ax.set_ylabel("predicted thickness (mm)")
    title = "Breslow thickness"
    if inside.size:
        title += f": {float(inside.mean()):.0%} of predictions inside the label"
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    return fig
