"""Predictions and ground truth in the ISIC 2019 challenge CSV format.

The challenge format is one row per image, ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``: the
image id without extension and one probability per diagnosis (ground truth: one-hot). Writing
ours in that format lets the official scorer (``isic-challenge-scoring``) and any ISIC tooling
read them. The model has no UNK output, so UNK is 0 unless a caller supplies a probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backend.data.schema import ALL_DIAGNOSES, DIAGNOSES, IMAGE_EXTENSIONS
from backend.errors import DataFormatError

#: Column order of an ISIC 2019 predictions / ground-truth CSV.
ISIC_COLUMNS: tuple[str, ...] = ("image", *ALL_DIAGNOSES)


def image_id(name: str | Path) -> str:
    """ISIC image id of a file name or path: the stem (``/x/ISIC_0000000.jpg`` -> ``ISIC_0000000``)."""
    base = Path(str(name))
    return base.stem if base.suffix.lower() in IMAGE_EXTENSIONS else base.name


def predictions_frame(image_ids: Sequence[str], probs: Any, unk_prob: Any = None) -> pd.DataFrame:
    """Predictions as an ISIC-format table.

    Args:
        image_ids: Image ids or file paths (reduced to ids with :func:`image_id`), one per row.
        probs: Probabilities of shape ``(N, 8)`` in :data:`DIAGNOSES` order, or ``(N, 9)`` with UNK last.
        unk_prob: UNK probability per row (only with 8 columns); None writes 0.

    Returns:
        DataFrame with exactly :data:`ISIC_COLUMNS`.

    Raises:
        ValueError: On mismatched shapes, duplicate ids, or values outside [0, 1] / not finite.
    """
    probs = np.asarray(probs, dtype=float)
    ids = [image_id(i) for i in image_ids]
    if probs.ndim != 2 or probs.shape[0] != len(ids) or probs.shape[1] not in (len(DIAGNOSES), len(ALL_DIAGNOSES)):
        raise ValueError(f"probs must have shape ({len(ids)}, 8 or 9), got {probs.shape}")
    if probs.shape[1] == len(DIAGNOSES):
        unk = np.zeros(len(ids)) if unk_prob is None else np.asarray(unk_prob, dtype=float).reshape(-1)
        if unk.shape[0] != len(ids):
            raise ValueError(f"unk_prob has {unk.shape[0]} values for {len(ids)} images")
        probs = np.column_stack([probs, unk])
    elif unk_prob is not None:
        raise ValueError("unk_prob given but probs already has a UNK column")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]")
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"duplicate image id {dup!r}")
    frame = pd.DataFrame(probs, columns=list(ALL_DIAGNOSES))
    frame.insert(0, "image", ids)
    return frame


def write_predictions_csv(path: str | Path, image_ids: Sequence[str], probs: Any, unk_prob: Any = None) -> Path:
    """Write :func:`predictions_frame` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions_frame(image_ids, probs, unk_prob).to_csv(path, index=False)
    return path


def truth_frame(image_ids: Sequence[str], diagnoses: Sequence[str]) -> pd.DataFrame:
    """Ground truth as the ISIC one-hot table (what the official scorer reads as truth).

    Args:
        image_ids: Image ids or paths, one per row.
        diagnoses: Diagnosis codes from :data:`ALL_DIAGNOSES`, one per row.

    Raises:
        ValueError: On an unknown diagnosis code or mismatched lengths.
    """
    ids = [image_id(i) for i in image_ids]
    if len(ids) != len(diagnoses):
        raise ValueError(f"{len(ids)} image ids but {len(diagnoses)} diagnoses")
    unknown = sorted({str(d) for d in diagnoses} - set(ALL_DIAGNOSES))
    if unknown:
        raise ValueError(f"unknown diagnosis {unknown[0]!r}; expected one of {', '.join(ALL_DIAGNOSES)}")
    onehot = np.array([[1.0 if d == c else 0.0 for c in ALL_DIAGNOSES] for d in diagnoses]).reshape(-1, 9)
    frame = pd.DataFrame(onehot, columns=list(ALL_DIAGNOSES))
    frame.insert(0, "image", ids)
    return frame


def write_truth_csv(path: str | Path, image_ids: Sequence[str], diagnoses: Sequence[str]) -> Path:
    """Write :func:`truth_frame` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    truth_frame(image_ids, diagnoses).to_csv(path, index=False)
    return path


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate an ISIC-format predictions CSV.

    A missing UNK column is accepted and filled with 0 (ISIC 2018-style files); extra columns,
    duplicate or empty image ids, and non-numeric, missing or out-of-range probabilities are not.

    Returns:
        DataFrame with exactly :data:`ISIC_COLUMNS`, ``image`` as str and float probabilities.

    Raises:
        DataFormatError: Naming the file, line (header = line 1) and column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "predictions file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # raw text: errors quote the file
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"not a readable CSV: {err}") from None
    required = ("image", *DIAGNOSES)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(path, f"missing column(s) {', '.join(missing)}; expected {','.join(ISIC_COLUMNS)}", 1)
    extra = [c for c in frame.columns if c not in ISIC_COLUMNS]
    if extra:
        raise DataFormatError(path, f"unexpected column; expected {','.join(ISIC_COLUMNS)}", 1, str(extra[0]))
    if "UNK" not in frame.columns:
        frame["UNK"] = 0.0
    for idx, value in enumerate(frame["image"]):
        if not value.strip():
            raise DataFormatError(path, "empty image id", idx + 2, "image")
    dup = frame["image"].duplicated()
    if dup.any():
        idx = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataFormatError(path, f"duplicate image id {frame['image'].iloc[idx]!r}", idx + 2, "image")
    for col in ALL_DIAGNOSES:
        numeric = pd.to_numeric(frame[col], errors="coerce").astype(float)
        bad = numeric.isna() | ~numeric.between(0.0, 1.0)
        if bad.any():
            idx = int(np.flatnonzero(bad.to_numpy())[0])
            raw = str(frame[col].iloc[idx]).strip()
            shown = repr(raw) if raw else "empty"
            raise DataFormatError(path, f"probability must be a number in [0, 1], got {shown}", idx + 2, col)
        frame[col] = numeric
    frame["image"] = frame["image"].map(image_id)
    return frame[list(ISIC_COLUMNS)].reset_index(drop=True)
