"""Evaluate a trained checkpoint on a labelled table: metrics, calibration, plots and prediction files.

``evaluate(...)`` is what ``scripts/evaluate.py`` wraps. It runs the model through the predictor's
batched path (``Predictor.raw_outputs``: the checkpoint's own eval preprocessing and metadata
encoding, DataLoader workers), leaves out rows whose image cannot be read (one warning with the
count), optionally fits a temperature on the validation rows and reports expected calibration
error before and after, and writes into ``output_dir``::

    metrics.csv              every scalar metric with a note on how it was computed
    predictions_isic.csv     image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (ISIC submission format)
    predictions.csv          the same plus label, malignant probability and thickness (mm)
    confusion_matrix.png, roc_curves.png, thickness.png
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.schema import MALIGNANT_INDICES
from backend.data.splits import read_splits
from backend.errors import ConfigError, DataFormatError
from backend.evaluation.isic_format import write_predictions_csv
from backend.evaluation.split_eval import row_metadata
from backend.inference.predictor import Predictor
from backend.metrics.calibration import apply_temperature, expected_calibration_error, fit_temperature
from backend.metrics.plots import confusion_matrix_figure, roc_curves_figure, save_png, thickness_figure
from backend.metrics.scores import compute_metrics, write_metrics_csv

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and where it wrote it."""

    metrics: dict[str, Any]
    temperature: float | None
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class TablePredictions:
    """Raw network outputs over the rows of a table whose images could be read.

    Attributes:
        rows: Those rows, re-indexed from 0.
        logits: ``(N, 8)`` diagnosis logits, row-aligned with ``rows``.
        thickness_mm: ``(N,)`` predicted Breslow thickness in mm.
    """

    rows: pd.DataFrame
    logits: np.ndarray
    thickness_mm: np.ndarray


def predict_table(predictor: Predictor, table: pd.DataFrame, num_workers: int = 0, use_metadata: bool = True
                  ) -> TablePredictions:
    """Run the model over every row of a table through the predictor's batched path, skipping unreadable images.

    Args:
        predictor: The loaded model (its own eval preprocessing and metadata encoding); the logits
            returned are the network's own, calibration offsets of a bundle taken out.
        table: Rows in the lesion-table layout.
        num_workers: DataLoader workers decoding images.
        use_metadata: Feed the table's age/sex/site to fusion models (False: evaluate image only).
    """
    rows = table.reset_index(drop=True)
    raw, kept, skipped = predictor.raw_outputs(rows["image"].tolist(), row_metadata(rows), num_workers=num_workers,
                                               use_metadata=use_metadata)
    if skipped:
        log.warning("%d of %d rows left out because their images could not be read (first: %s)",
                    len(skipped), len(rows), skipped[0])
    logits = raw.logits
    if predictor.class_offsets is not None:
        # A bundle calibrated with offsets has them folded into its head (times its temperature):
        # take them out, so these are the network's own logits, as for a checkpoint.
        logits = logits - predictor.temperature * predictor.class_offsets
    return TablePredictions(rows.iloc[kept].reset_index(drop=True), logits, raw.thickness_mm)


def _split_rows(table: pd.DataFrame, splits_csv: str | Path | None, split: str | None) -> pd.DataFrame:
    if split is None:
        return table
    if splits_csv is None:
        raise ConfigError(f"--split {split} needs a splits CSV (the run's splits.csv)")

    assignment = read_splits(splits_csv, table)
    rows = table[assignment.reindex(table.index) == split].reset_index(drop=True)
    if rows.empty:
        raise ConfigError(f"{splits_csv}: split '{split}' has no rows")
    return rows


def _calibration_splits(table: pd.DataFrame, splits_csv: Path, calibrate_split: str, csv: str | Path
                        ) -> Path | None:
    """The run's split file when it fits the evaluated table, else None (calibration skipped, and said).

    Evaluating a run's checkpoint on an external table (another clinic's images) finds the run's
    ``splits.csv`` beside it, whose images are not in that table: the temperature cannot be fitted
    on the run's validation split then, and that is no reason to refuse the evaluation.
    """
    try:
        read_splits(splits_csv, table)
    except DataFormatError:
        try:
            listed = set(pd.read_csv(splits_csv, usecols=["image_id"], dtype=str)["image_id"])
        except (OSError, ValueError):
            listed = set()
        ids = set(table["image_id"].astype(str))
        if ids <= listed:
            raise  # the run's own table with a broken split file: that is an error, not an external table
        if ids & listed:
            log.warning("%d of the %d images of %s were in the run's split (%s): their figures are not "
                        "external", len(ids & listed), len(ids), csv, splits_csv)
        log.warning("%s names images that are not in %s (an external table?): temperature scaling on its '%s' "
                    "split skipped; pass --splits_csv to calibrate, or --calibrate_split none to silence this",
                    splits_csv, csv, calibrate_split)
        return None
    return splits_csv


def default_splits_csv(checkpoint: str | Path) -> Path | None:
    """``<run>/splits.csv`` for a checkpoint at ``<run>/ckpts/*.ckpt``, when it exists."""
    candidate = Path(checkpoint).resolve().parent.parent / "splits.csv"
    return candidate if candidate.is_file() else None


def evaluate(
    checkpoint: str | Path,
    csv: str | Path,
    output_dir: str | Path,
    img_dir: str | Path | None = None,
    split: str | None = None,
    splits_csv: str | Path | None = None,
    calibrate_split: str | None = "val",
    threshold: float = 0.5,
    batch_size: int = 32,
    num_workers: int = 0,
    use_metadata: bool = True,
    skip_missing: bool = False,
) -> EvaluationResult:
    """Evaluate ``checkpoint`` on ``csv`` (optionally one split of it) and write the report files.

    Args:
        checkpoint: A DermaLens Lightning checkpoint (or bundle folder; its raw logits are evaluated).
        csv: Labelled table in any supported format.
        output_dir: Folder for the report files (created).
        img_dir: Image folder of ``csv``.
        split: Evaluate only this split (``test``, ``val``...) of ``splits_csv``; None = every row.
        splits_csv: Split assignment; default ``<run>/splits.csv`` beside the checkpoint.
        calibrate_split: Fit temperature scaling on this split and report ECE before/after; None skips.
        threshold: Malignant-probability threshold for sensitivity and specificity.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers.
        use_metadata: Feed patient metadata to fusion models.
        skip_missing: Drop rows whose image file is missing (one warning with the count).
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold is a probability of malignancy and must be between 0 and 1, got {threshold}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(checkpoint, engine="torch", batch_size=batch_size)
    table = load_table(csv, img_dir=img_dir, skip_missing=skip_missing)
    explicit_splits = splits_csv is not None
    splits_csv = splits_csv or (default_splits_csv(checkpoint) if split or calibrate_split else None)
    if calibrate_split and splits_csv is not None and split is None and not explicit_splits:
        splits_csv = _calibration_splits(table, splits_csv, calibrate_split, csv)
    preds = predict_table(predictor, _split_rows(table, splits_csv, split), num_workers, use_metadata)
    rows = preds.rows
    targets = encode_targets(rows)

    temperature = None
    probs_raw = apply_temperature(preds.logits, 1.0)
    probs = probs_raw
    calib_notes: dict[str, float] = {}
    if calibrate_split and splits_csv is not None:
        calib = predict_table(predictor, _split_rows(table, splits_csv, calibrate_split), num_workers, use_metadata)
        calib_y = encode_targets(calib.rows)["diagnosis"]
        if (calib_y >= 0).any():
            temperature = fit_temperature(calib.logits, calib_y)
            probs = apply_temperature(preds.logits, temperature)
            known = targets["diagnosis"] >= 0
            if known.any():
                y = targets["diagnosis"][known]
                calib_notes = {
                    "ece_before_calibration": expected_calibration_error(probs_raw[known], y),
                    "ece_after_calibration": expected_calibration_error(probs[known], y),
                    "temperature": temperature,
                }
    elif calibrate_split:
        log.warning("no splits CSV: temperature scaling skipped (pass --splits_csv to calibrate on '%s')",
                    calibrate_split)

    metrics = compute_metrics(
        targets["diagnosis"], probs, y_true_malignant=targets["label"], threshold=threshold,
        thickness_pred_mm=preds.thickness_mm, thickness_lo=targets["thickness_lo"],
        thickness_hi=targets["thickness_hi"],
    )
    metrics.update(calib_notes)
    if "temperature" in calib_notes:
        metrics["notes"]["temperature"] = f"temperature scaling fitted on the '{calibrate_split}' split"

    files = {"metrics": write_metrics_csv(metrics, out / "metrics.csv")}
    files["predictions_isic"] = write_predictions_csv(out / "predictions_isic.csv", rows["image_id"].tolist(), probs)
    detail = pd.read_csv(files["predictions_isic"])
    detail["label"] = rows["label"].to_numpy()
    detail["malignant"] = probs[:, list(MALIGNANT_INDICES)].sum(axis=1)
    detail["thickness_mm"] = preds.thickness_mm
    files["predictions"] = out / "predictions.csv"
    detail.to_csv(files["predictions"], index=False)
    files["confusion_matrix"] = save_png(
        confusion_matrix_figure(metrics["confusion_matrix"]), out / "confusion_matrix.png"
    )
    files["roc_curves"] = save_png(
        roc_curves_figure(targets["diagnosis"], probs, y_true_malignant=targets["label"]), out / "roc_curves.png"
    )
    files["thickness"] = save_png(
        thickness_figure(preds.thickness_mm, targets["thickness_lo"], targets["thickness_hi"]), out / "thickness.png"
    )
    return EvaluationResult(metrics, temperature, out, files)
