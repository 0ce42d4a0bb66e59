"""Predict rows of a lesion table and score them: shared by the card, ablations and leave-one-dataset-out.

Every place that turns "a model and some labelled rows" into figures goes through
:func:`predict_rows` and :func:`score_rows`, so the card, the ablation table and the
leave-one-dataset-out table are computed identically (same metadata handling, same unreadable-image
policy, same metric definitions and bootstrap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backend.data.dataset import encode_targets
from backend.errors import ConfigError
from backend.evaluation.acquisition import VARIANTS, PerturbedImages
from backend.evaluation.model_card import card_metrics, metric_plan, paired_differences
from backend.inference.predictor import Predictor, RawOutputs


@dataclass
class RowPredictions:
    """Model outputs for the readable rows of a table.

    Attributes:
        rows: The rows whose image could be read, re-indexed from 0.
        raw: Calibrated probabilities, logits, thickness and features, one row per ``rows`` row.
        skipped: One message per unreadable image.
        class_offsets: The predictor's calibration offsets (the class-balanced decision), or None.
    """

    rows: pd.DataFrame
    raw: RawOutputs
    skipped: list[str]
    class_offsets: np.ndarray | None = None


def row_metadata(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The patient metadata of each row, as the predictor takes it."""
    return [{"age_approx": a, "sex": s, "anatom_site_general": site} for a, s, site in
            zip(rows["age_approx"], rows["sex"], rows["anatom_site_general"], strict=True)]


def predict_rows(predictor: Predictor, rows: pd.DataFrame, tta: bool = False, progress: bool = False,
                 variant: str = "plain", num_workers: int = 0) -> RowPredictions:
    """Predict every row of a lesion table (image paths in ``image``), skipping unreadable images.

    The rows go through the predictor's batched path (``Predictor.raw_outputs``); a perturbed
    variant's images are decoded and perturbed lazily, in the DataLoader workers.

    Args:
        predictor: The loaded model.
        rows: Lesion-table rows to predict.
        tta: Average over the 8 flips/rotations.
        progress: Show a progress bar.
        variant: A name of :data:`backend.evaluation.acquisition.VARIANTS`: the images as stored
            (``plain``), or squashed to a square, or framed by a black dermoscope border.
        num_workers: DataLoader worker processes decoding the images.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown acquisition variant {variant!r}; valid: {list(VARIANTS)}")
    rows = rows.reset_index(drop=True)
    perturb = VARIANTS[variant]
    images = rows["image"].tolist() if perturb is None else PerturbedImages(rows["image"].tolist(), perturb)
    raw, kept, skipped = predictor.raw_outputs(images, row_metadata(rows), progress=progress, tta=tta,
                                               num_workers=num_workers)
    return RowPredictions(rows.iloc[kept].reset_index(drop=True), raw, skipped, predictor.class_offsets)


def score_rows(pred: RowPredictions, n_boot: int = 1000, only: tuple[str, ...] | None = None,
               seed: int = 0) -> dict[str, dict[str, float]]:
    """Model-card metrics of the predictions with 95% intervals, patients (else lesions) resampled.

    Args:
        pred: Output of :func:`predict_rows`.
        n_boot: Bootstrap resamples.
        only: Compute just these metrics.
        seed: Resampling seed.
    """
    t = encode_targets(pred.rows)
    return card_metrics(t["diagnosis"], pred.raw.probs, t["label"], pred.raw.thickness_mm, t["thickness_lo"],
                        t["thickness_hi"], groups=_groups(pred.rows), n_boot=n_boot, only=only, seed=seed,
                        class_offsets=pred.class_offsets)



def _groups(rows: pd.DataFrame) -> np.ndarray:
    """The bootstrap's resampling unit per row: the patient, else the lesion."""
    return rows["patient_id"].fillna(rows["lesion_id"]).to_numpy(dtype=object)


def _plan(pred: RowPredictions, keep: np.ndarray) -> dict[str, Any]:
    """The metric plan of the predictions' rows at positions ``keep``, in that order."""
    rows = pred.rows.iloc[keep].reset_index(drop=True)
    t = encode_targets(rows)
    return metric_plan(t["diagnosis"], pred.raw.probs[keep], t["label"], pred.raw.thickness_mm[keep],
                       t["thickness_lo"], t["thickness_hi"], class_offsets=pred.class_offsets)


def score_change(reference: RowPredictions, changed: RowPredictions, n_boot: int = 1000,
                 only: tuple[str, ...] | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """How much each figure moves from ``reference`` to ``changed``, with a paired 95% interval.

    Used for the acquisition variants: the same test images, plain and perturbed. Only images
    readable in both are compared; both predictions are scored on the same resampled patients
    (:func:`backend.evaluation.model_card.paired_differences`).

    Args:
        reference: :func:`predict_rows` output of the reference (e.g. the plain split).
        changed: :func:`predict_rows` output of the same rows changed (e.g. a variant).
        n_boot: Bootstrap resamples.
        only: Just these metrics.
        seed: Resampling seed.

    Returns:
        ``{metric: {"value", "lo", "hi", "n"}}``, ``value`` being changed minus reference.
    """
    ids_ref = reference.rows["image_id"].astype(str).to_numpy()
    ids_new = changed.rows["image_id"].astype(str).to_numpy()
    common = np.intersect1d(ids_ref, ids_new)
    keep_ref, keep_new = np.isin(ids_ref, common), np.isin(ids_new, common)
    order_ref, order_new = np.argsort(ids_ref[keep_ref], kind="stable"), np.argsort(ids_new[keep_new], kind="stable")
    ref_idx, new_idx = np.flatnonzero(keep_ref)[order_ref], np.flatnonzero(keep_new)[order_new]
    if not np.array_equal(ids_ref[ref_idx], ids_new[new_idx]):
        raise ValueError("score_change: an image id appears more than once in one of the predictions")
    return paired_differences(_plan(reference, ref_idx), _plan(changed, new_idx),
                              groups=_groups(reference.rows.iloc[ref_idx]), n_boot=n_boot, seed=seed, only=only)
