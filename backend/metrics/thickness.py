"""Breslow-thickness metrics, each defined once, against interval labels.

A thickness label is the interval ``[lo, hi]`` in mm: exact when ``lo == hi`` (``0.0`` = melanoma in
situ), a band when ``lo < hi`` (Derm7pt: ``<0.76``, ``0.76-1.5``, ``>1.5`` mm), open when ``hi`` is
``inf`` or NaN. A NaN ``lo`` (or a NaN prediction) means the row has no thickness label; such rows are
left out. A metric without any row it applies to is NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backend.data.schema import THICKNESS_BANDS, THICKNESS_SPLIT_MM


def labelled_rows(pred: Any, lo: Any, hi: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, lo, hi, labelled)`` as float arrays, an open upper bound as ``inf`` on labelled rows.

    Raises:
        ValueError: When the three arrays differ in length.
    """
    pred, lo, hi = (np.asarray(a, dtype=float).reshape(-1) for a in (pred, lo, hi))
    if not pred.shape == lo.shape == hi.shape:
        raise ValueError(f"pred, lo and hi differ in length: {pred.shape[0]}, {lo.shape[0]}, {hi.shape[0]}")
    labelled = ~np.isnan(lo) & ~np.isnan(pred)
    hi = np.where(np.isnan(hi) & labelled, np.inf, hi)
    return pred, lo, hi, labelled


def exact_errors(pred: Any, lo: Any, hi: Any) -> np.ndarray:
    """``prediction - label`` (mm) on the rows with an exact label (``lo == hi``)."""
    pred, lo, hi, labelled = labelled_rows(pred, lo, hi)
    exact = labelled & (lo == hi)
    return pred[exact] - lo[exact]


def thickness_mae(pred: Any, lo: Any, hi: Any) -> float:
    """Mean absolute error (mm) over exact labels."""
    err = exact_errors(pred, lo, hi)
    return float(np.abs(err).mean()) if err.size else math.nan


def thickness_rmse(pred: Any, lo: Any, hi: Any) -> float:
    """Root mean squared error (mm) over exact labels."""
    err = exact_errors(pred, lo, hi)
    return float(np.sqrt((err**2).mean())) if err.size else math.nan


def thickness_mape(pred: Any, lo: Any, hi: Any) -> float:
    """Mean absolute percentage error (a fraction) over exact labels above 0 mm (in situ is undefined)."""
    pred, lo, hi, labelled = labelled_rows(pred, lo, hi)
    nonzero = labelled & (lo == hi) & (lo > 0)
    ape = np.abs(pred[nonzero] - lo[nonzero]) / lo[nonzero]
    return float(ape.mean()) if ape.size else math.nan


def thickness_interval_accuracy(pred: Any, lo: Any, hi: Any) -> float:
    """Share of band labels (``lo < hi``) whose prediction lies in ``[lo, hi]``."""
    pred, lo, hi, labelled = labelled_rows(pred, lo, hi)
    interval = labelled & (lo < hi)
    inside = (pred[interval] >= lo[interval]) & (pred[interval] <= hi[interval])
    return float(inside.mean()) if inside.size else math.nan


def _band(values: np.ndarray) -> np.ndarray:
    """Index in :data:`THICKNESS_BANDS` of each (non-negative) thickness."""
    return np.array([next(i for i, (_, a, b) in enumerate(THICKNESS_BANDS) if a <= x < b) for x in values])


def thickness_band_accuracy(pred: Any, lo: Any, hi: Any) -> float:
    """Share of labelled rows whose prediction agrees with the label, at the resolution of the label.

    A band label agrees when the prediction lies in ``[lo, hi]``; an exact label when the prediction
    falls in the same reporting band of :data:`backend.data.schema.THICKNESS_BANDS` (a negative
    prediction counts as 0 mm).
    """
    pred, lo, hi, labelled = labelled_rows(pred, lo, hi)
    if not labelled.any():
        return math.nan
    pred, lo, hi = pred[labelled], lo[labelled], hi[labelled]
    inside = np.where(lo == hi, _band(np.maximum(pred, 0)) == _band(lo), (pred >= lo) & (pred <= hi))
    return float(inside.mean())


def thick_vs_thin(pred: Any, lo: Any, hi: Any, split_mm: float = THICKNESS_SPLIT_MM) -> tuple[np.ndarray, np.ndarray]:
    """Truth (1 thick, 0 thin, as float) and predicted mm on the rows whose label decides thin vs thick.

    Thick means ``lo >= split_mm``; thin means ``hi <= split_mm``; a label straddling the split decides
    nothing and is left out.
    """
    pred, lo, hi, labelled = labelled_rows(pred, lo, hi)
    thick = labelled & (lo >= split_mm)
    thin = labelled & (hi <= split_mm) & ~thick
    decided = thick | thin
    return thick[decided].astype(float), pred[decided]


def thickness_split_accuracy(pred: Any, lo: Any, hi: Any, split_mm: float = THICKNESS_SPLIT_MM) -> float:
    """Share of decided labels (see :func:`thick_vs_thin`) whose prediction is on the right side of the split."""
    truth, score = thick_vs_thin(pred, lo, hi, split_mm)
    return float(((score >= split_mm) == truth.astype(bool)).mean()) if truth.size else math.nan
