"""Prediction records: the network's outputs of a batch, and what is shown and written for one image.

:class:`RawOutputs` is what a forward pass gives (calibrated probabilities, logits, thickness,
features); :class:`Prediction` is one image's result with its risk, traffic light, thickness band
and quality flags, built by :meth:`Prediction.from_outputs`. :data:`OUTPUT_COLUMNS` and
:meth:`Prediction.to_row` define a batch-prediction CSV row (``scripts/predict.py``; the app's
export has its own columns, ``app/report.py``), and :func:`csv_value` how a value is written there
(floats to 6 decimals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from backend.data.schema import DIAGNOSES, MALIGNANT_INDICES
from backend.inference.quality import QualityFlag
from backend.inference.risk import NOT_ASSESSABLE, RiskConfig, assessed_light, risk_index, thickness_band, traffic_light
from backend.metrics.calibration import balanced_decision_scores

#: Columns of a batch-prediction CSV, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "image", *DIAGNOSES, "UNK", "malignant", "risk", "traffic_light", "model_light", "thickness_mm", "thickness_band",
    "flags", "quality_reasons",
)
#: Decimals of the floats in a batch-prediction CSV.
CSV_DECIMALS = 6


class RawOutputs(NamedTuple):
    """Network outputs of a batch after calibration (and TTA averaging).

    Attributes:
        probs: ``(B, 8)`` calibrated probabilities.
        logits: ``(B, 8)`` raw diagnosis logits of the unaugmented images (before temperature).
        thickness_mm: ``(B,)`` thickness estimate in mm.
        features: ``(B, D)`` pooled backbone features of the unaugmented images.
    """

    probs: np.ndarray
    logits: np.ndarray
    thickness_mm: np.ndarray
    features: np.ndarray

    @classmethod
    def empty(cls) -> RawOutputs:
        """The outputs of no image."""
        none = np.zeros((0, len(DIAGNOSES)))
        return cls(none, none, np.zeros(0), np.zeros((0, 0)))

    @classmethod
    def concatenate(cls, parts: list[RawOutputs]) -> RawOutputs:
        """The outputs of several batches, in order (:meth:`empty` for none)."""
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate(p, axis=0) for p in zip(*parts, strict=True)))


@dataclass
class Prediction:
    """Everything shown for one image.

    Attributes:
        image: The image's name (its path, the upload's file name, or ``image_<i>`` for arrays).
        probabilities: Calibrated probability of each diagnosis, in :data:`DIAGNOSES` order.
        malignant: P(MEL) + P(BCC) + P(SCC).
        benign: ``1 - malignant``.
        risk: Risk index in ``[0, 1]`` (``backend.inference.risk``).
        traffic_light: The light shown: ``green``, ``yellow`` or ``red``, or ``grey`` (not assessable)
            when the quality gate flagged the image (``backend.inference.risk.assessed_light``).
        thickness_mm: Breslow thickness estimate in mm (meaningful only if the lesion is a melanoma).
        thickness_band: Band of ``thickness_mm`` (``in situ``, ``<0.8 mm``, ... ``>4 mm``).
        top_class: The diagnosis the model calls: the most probable one, or with calibration offsets
            the class-balanced decision (see :meth:`from_outputs`).
        top_probability: Its probability.
        flags: Quality-gate flag codes (``blurred``, ``out_of_distribution``...); empty when none.
        flag_reasons: Code -> human-readable reason.
        metadata_used: Whether patient metadata was given and fed to the model.
        tta: Whether test-time augmentation was used.
        ood_distance: Feature distance from the training images (None without statistics).
        model_light: The model's own light from the risk alone (``green``, ``yellow`` or ``red``),
            kept for "show the model's result anyway"; equals ``traffic_light`` unless that is grey.
    """

    image: str
    probabilities: dict[str, float]
    malignant: float
    benign: float
    risk: float
    traffic_light: str
    thickness_mm: float
    thickness_band: str
    top_class: str
    top_probability: float
    flags: list[str] = field(default_factory=list)
    flag_reasons: dict[str, str] = field(default_factory=dict)
    metadata_used: bool = False
    tta: bool = False
    ood_distance: float | None = None
    model_light: str = ""

    def __post_init__(self) -> None:
        if not self.model_light:
            self.model_light = self.traffic_light

    @classmethod
    def from_outputs(cls, name: str, probs: np.ndarray, thickness_mm: float, flags: list[QualityFlag],
                     risk_cfg: RiskConfig, metadata_used: bool = False, tta: bool = False,
                     ood_distance: float | None = None, class_offsets: np.ndarray | None = None) -> Prediction:
        """One image's record from its calibrated probabilities, thickness and quality flags.

        ``top_class`` is the class-balanced decision under calibration offsets
        (``backend.metrics.calibration.balanced_decision_scores``), else the most probable class;
        ``top_probability`` is its calibrated probability either way.
        """
        probabilities = {c: float(p) for c, p in zip(DIAGNOSES, probs, strict=True)}
        malignant = float(min(max(sum(float(probs[i]) for i in MALIGNANT_INDICES), 0.0), 1.0))
        risk = float(risk_index(probs, risk_cfg))
        top = int(np.argmax(balanced_decision_scores(probs, class_offsets)))
        return cls(
            image=name, probabilities=probabilities, malignant=malignant, benign=1.0 - malignant, risk=risk,
            traffic_light=assessed_light(risk, flags, risk_cfg), model_light=traffic_light(risk, risk_cfg),
            thickness_mm=thickness_mm,
            thickness_band=thickness_band(thickness_mm), top_class=DIAGNOSES[top], top_probability=float(probs[top]),
            flags=[f.code for f in flags], flag_reasons={f.code: f.reason for f in flags},
            metadata_used=metadata_used, tta=tta, ood_distance=ood_distance,
        )

    @property
    def reliable(self) -> bool:
        """False when the quality gate flagged the image (the prediction is still given)."""
        return not self.flags

    @property
    def assessable(self) -> bool:
        """False when the light is grey: the image cannot be assessed and should be retaken."""
        return self.traffic_light != NOT_ASSESSABLE

    @property
    def quality_reasons(self) -> list[str]:
        """The plain-word reason of each quality flag, in flag order (empty when none).

        A flag without a recorded reason falls back to its code with spaces (``too_dark`` -> ``too dark``).
        """
        return [self.flag_reasons.get(code) or code.replace("_", " ") for code in self.flags]

    def to_row(self) -> dict[str, Any]:
        """One row of ``scripts/predict.py`` output (see :data:`OUTPUT_COLUMNS`), values unformatted.

        ``flags`` holds the machine-readable codes joined by ``;`` (``too_dark;blurred``);
        ``quality_reasons`` the same flags' plain-word reasons (:attr:`quality_reasons`) joined by ``"; "``,
        so a reader of the CSV sees why an image is grey.
        """
        row: dict[str, Any] = {"image": self.image}
        row.update({name: self.probabilities[name] for name in DIAGNOSES})
        row["UNK"] = 0.0
        row.update({
            "malignant": self.malignant, "risk": self.risk, "traffic_light": self.traffic_light,
            "model_light": self.model_light,
            "thickness_mm": self.thickness_mm, "thickness_band": self.thickness_band, "flags": ";".join(self.flags),
            "quality_reasons": "; ".join(self.quality_reasons),
        })
        return row


def csv_value(value: Any) -> str:
    """How a row value is written to a batch-prediction CSV: floats to :data:`CSV_DECIMALS` decimals, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{CSV_DECIMALS}f}"
    return str(value)
