"""Change of one lesion between two visits: :func:`compare_visits` and its :class:`FollowUpResult`.

Everything is measured at the working resolution (:attr:`RegistrationConfig.work_side`) in the
**baseline's frame**: the follow-up photo is warped onto the baseline first
(:mod:`backend.followup.registration`), so a zoomed-in second photo does not count as growth, and
measures are taken only over the skin **both photos show** (the common view).

* **Lighting.** The aligned follow-up is matched to the baseline with one gain per RGB channel
  (a diagonal, von Kries model of a change of lamp, exposure or white balance), fitted on the
  skin around the lesions (unsaturated pixels of the common view outside both lesions). After
  that a global brightness or colour shift of the photo is no change at all.
* **Segmentation.** The baseline lesion is :func:`~backend.followup.segmentation.segment_lesion`'s;
  the follow-up lesion is cut from the matched follow-up with the *baseline's* colour-constancy
  gains and threshold and the component overlapping the baseline lesion is kept, so both visits
  are segmented by the same rule and a larger lesion does not shift its own threshold.
* **Measures.** Area change ``after / before - 1`` (0.44 = 44% larger), maximum-diameter change
  (relative), border change (difference of ``1 - solidity``), colour change (CIE76 delta E of the
  mean L*a*b* lesion colours of the matched, colour-constancy-corrected images), and a change
  map: per-pixel delta E inside the union of the two lesions, with the grown and receded parts.
* **Model.** With a :class:`~backend.inference.predictor.Predictor`, risk and malignancy of each visit and the
  cosine distance between the two images' network features (how differently the model sees them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.errors import FollowUpError
from backend.followup.registration import (
    Registration,
    RegistrationConfig,
    compose,
    invert,
    register_visits,
    resize_matrix,
    work_copy,
)
from backend.followup.segmentation import (
    LesionSegmentation,
    apply_gains,
    frame_edge,
    lesion_mask,
    measure,
    segment_lesion,
    to_lab,
    valid_pixels,
)
from backend.followup.synthetic import common_view
from backend.inference.risk import NOT_ASSESSABLE, RISK_DECIMALS, format_risk, risk_decimals

#: Relative area or diameter change reported as growth or shrinkage (the measurement's own accuracy).
SIZE_FLAG: float = 0.10
#: Colour change (delta E) reported as a change of colour; about 2.3 is just noticeable side by side.
COLOUR_FLAG: float = 8.0
#: Increase of border irregularity (``1 - solidity``) reported as a more irregular border.
BORDER_FLAG: float = 0.05
#: Increase of the risk index reported even when the traffic light stays the same.
RISK_FLAG: float = 0.10


@dataclass
class FollowUpResult:
    """Everything measured between two visits of one lesion.

    Relative changes are ``after / before - 1`` (0.44 = 44% larger); values that could not be
    measured (alignment failed, no model) are None.

    Attributes:
        before_name: Name of the baseline image.
        after_name: Name of the follow-up image.
        aligned: Whether the follow-up could be aligned onto the baseline.
        reason: Why not (None when aligned).
        registration: The alignment (matrix at the working resolution).
        matrix: 2x3 map from the follow-up's original pixels to the baseline's original pixels.
        area_change: Relative change of lesion area.
        diameter_change: Relative change of maximum diameter.
        colour_change: CIE76 delta E between the mean lesion colours.
        border_change: Change of border irregularity (``1 - solidity``; > 0 = more irregular).
        area_before_px: Baseline lesion area in the common view, baseline original pixels.
        area_after_px: Follow-up lesion area in the common view, baseline original pixels.
        diameter_before_px: Baseline maximum diameter, baseline original pixels.
        diameter_after_px: Follow-up maximum diameter, baseline original pixels.
        risk_before: Model risk index of the baseline.
        risk_digits: Decimals both risks are shown with, so each shown number agrees with its light
            (``backend.inference.risk.risk_decimals``: more than 3 only within rounding of a threshold).
        risk_after: Model risk index of the follow-up.
        malignant_before: Model P(malignant) of the baseline.
        malignant_after: Model P(malignant) of the follow-up.
        light_before: Traffic light of the baseline.
        light_after: Traffic light of the follow-up.
        embedding_distance: Cosine distance between the two images' network features (0 = same).
        flags: Plain-English findings and cautions, most important first.
        before: Baseline image at the working resolution.
        after_aligned: Follow-up warped and lighting-matched onto ``before`` (None when not aligned).
        common: Pixels of ``before`` the follow-up also shows.
        before_mask: Baseline lesion (working resolution, common view).
        after_mask: Follow-up lesion in the baseline frame.
        change_map: Per-pixel delta E inside the union of the lesions (0 elsewhere).
        before_lesion: Measures of the baseline lesion (its own segmentation).
        after_lesion: Measures of the follow-up lesion in its own photo (None when not found).
    """

    before_name: str
    after_name: str
    aligned: bool
    reason: str | None
    registration: Registration
    matrix: np.ndarray | None = None
    area_change: float | None = None
    diameter_change: float | None = None
    colour_change: float | None = None
    border_change: float | None = None
    area_before_px: float | None = None
    area_after_px: float | None = None
    diameter_before_px: float | None = None
    diameter_after_px: float | None = None
    risk_before: float | None = None
    risk_digits: int = RISK_DECIMALS
    risk_after: float | None = None
    malignant_before: float | None = None
    malignant_after: float | None = None
    light_before: str | None = None
    light_after: str | None = None
    embedding_distance: float | None = None
    flags: list[str] = field(default_factory=list)
    before: np.ndarray | None = None
    after_aligned: np.ndarray | None = None
    common: np.ndarray | None = None
    before_mask: np.ndarray | None = None
    after_mask: np.ndarray | None = None
    change_map: np.ndarray | None = None
    before_lesion: LesionSegmentation | None = None
    after_lesion: LesionSegmentation | None = None

    @property
    def risk_comparable(self) -> bool:
        """Whether the two visits' risks may be compared: both predicted and neither image ``grey``.

        A visit the model's quality check could not assess has no risk to speak of (its light is
        grey), so no change of risk is reported or coloured for the pair.
        """
        return (self.risk_before is not None and self.risk_after is not None
                and NOT_ASSESSABLE not in (self.light_before, self.light_after))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready measures (no images): what ``scripts/compare_visits.py`` writes to ``change.json``."""
        def num(value: float | None, digits: int = 4) -> float | None:
            return None if value is None or not math.isfinite(value) else round(float(value), digits)

        return {
            "before": self.before_name, "after": self.after_name,
            "aligned": self.aligned, "reason": self.reason,
            "area_change": num(self.area_change), "diameter_change": num(self.diameter_change),
            "colour_change_delta_e": num(self.colour_change, 2), "border_change": num(self.border_change),
            "area_before_px": num(self.area_before_px, 1), "area_after_px": num(self.area_after_px, 1),
            "diameter_before_px": num(self.diameter_before_px, 1), "diameter_after_px": num(self.diameter_after_px, 1),
            "risk_before": num(self.risk_before), "risk_after": num(self.risk_after),
            "malignant_before": num(self.malignant_before), "malignant_after": num(self.malignant_after),
            "traffic_light_before": self.light_before, "traffic_light_after": self.light_after,
            "risk_comparable": self.risk_comparable,
            "embedding_distance": num(self.embedding_distance),
            "flags": list(self.flags),
            "matrix": None if self.matrix is None else [[round(float(v), 6) for v in row] for row in self.matrix],
            "registration": self.registration.to_dict(),
            "before_lesion": None if self.before_lesion is None else self.before_lesion.to_dict(),
            "after_lesion": None if self.after_lesion is None else self.after_lesion.to_dict(),
        }


# -- steps ----------------------------------------------------------------------------------------


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def lighting_gains(before: np.ndarray, after: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Per-channel gains making the aligned follow-up's skin match the baseline's (von Kries model).

    Args:
        before: Baseline RGB (uint8 or float 0-255).
        after: Aligned follow-up RGB, same frame.
        skin: HxW bool pixels to fit on (skin both photos show).

    Returns:
        Three gains (1 where there is too little unsaturated skin to fit).
    """
    b = before.astype(np.float64)
    a = after.astype(np.float64)
    use = skin & (b.max(axis=2) < 250) & (a.max(axis=2) < 250) & (a.min(axis=2) > 5)
    if use.sum() < 50:
        use = skin
    if use.sum() < 50:
        return np.ones(3)
    return b[use].sum(axis=0) / np.maximum(a[use].sum(axis=0), 1e-6)


def _model_outputs(predictor: Any, inputs: tuple[Any, Any], metadata: tuple[Any, Any] | None,
                   result: FollowUpResult) -> None:
    """Fill the model's risk, malignancy, lights and feature distance of both visits into ``result``.

    ``metadata`` (one patient-metadata dict or None per visit) reaches a fusion model exactly as the
    Triage screen gives it, so a worklist image gets the same risk on both screens.
    """
    before, after = predictor.predict(list(inputs), metadata=None if metadata is None else list(metadata))
    result.risk_before, result.risk_after = float(before.risk), float(after.risk)
    cfg = getattr(predictor, "risk", None)
    result.risk_digits = max(risk_decimals(r, cfg) for r in (result.risk_before, result.risk_after))
    result.malignant_before, result.malignant_after = float(before.malignant), float(after.malignant)
    result.light_before, result.light_after = before.traffic_light, after.traffic_light
    raw, kept, _ = predictor.raw_outputs(list(inputs))
    if len(kept) == 2 and raw.features.shape[1] > 0:
        f0, f1 = raw.features[0].astype(np.float64), raw.features[1].astype(np.float64)
        norm = float(np.linalg.norm(f0) * np.linalg.norm(f1))
        result.embedding_distance = float(1.0 - f0 @ f1 / norm) if norm > 0 else None
    for prediction, when in ((before, "baseline"), (after, "follow-up")):
        if prediction.flags:
            reasons = "; ".join(prediction.flag_reasons.get(f, f) for f in prediction.flags)
            result.flags.append(f"the model's quality check flagged the {when} image ({reasons})")


def _percent(value: float) -> str:
    return f"{abs(value) * 100:.0f}%"


def change_flags(result: FollowUpResult) -> list[str]:
    """Plain-English findings of an aligned comparison (sizes, colour, border, risk), most important first.

    Args:
        result: An aligned comparison with its measures filled in.
    """
    flags = []
    if result.area_change is not None:
        if result.area_change >= SIZE_FLAG:
            flags.append(f"lesion grew by {_percent(result.area_change)} in area")
        elif result.area_change <= -SIZE_FLAG:
            flags.append(f"lesion shrank by {_percent(result.area_change)} in area")
    if result.diameter_change is not None:
        if result.diameter_change >= SIZE_FLAG:
            flags.append(f"largest diameter increased by {_percent(result.diameter_change)}")
        elif result.diameter_change <= -SIZE_FLAG:
            flags.append(f"largest diameter decreased by {_percent(result.diameter_change)}")
    if result.colour_change is not None and result.colour_change >= COLOUR_FLAG:
        flags.append(f"lesion colour changed (delta E {result.colour_change:.1f})")
    if result.border_change is not None and result.border_change >= BORDER_FLAG:
        flags.append("border became more irregular")
    if result.risk_comparable:
        if result.light_before != result.light_after:
            flags.append(f"model risk moved from {result.light_before} to {result.light_after} "
                         f"({format_risk(result.risk_before, result.risk_digits)} -> "
                         f"{format_risk(result.risk_after, result.risk_digits)})")
        elif result.risk_after - result.risk_before >= RISK_FLAG:
            flags.append(f"model risk rose from {format_risk(result.risk_before, result.risk_digits)} to "
                         f"{format_risk(result.risk_after, result.risk_digits)}")
    return flags


def compare_visits(before: np.ndarray, after: np.ndarray, predictor: Any = None, *, before_name: str = "before",
                   after_name: str = "after", model_inputs: tuple[Any, Any] | None = None,
                   model_metadata: tuple[Any, Any] | None = None,
                   config: RegistrationConfig | None = None) -> FollowUpResult:
    """Compare a baseline and a follow-up photo of one lesion (see the module docstring).

    Args:
        before: Baseline photo, HxWx3 uint8 RGB.
        after: Follow-up photo, HxWx3 uint8 RGB (any size).
        predictor: A :class:`~backend.inference.predictor.Predictor` for risk and feature distance; None skips them.
        before_name: What messages call the baseline (its file or upload name).
        after_name: What messages call the follow-up.
        model_inputs: What the predictor reads for each visit (anything ``Predictor.load`` takes,
            e.g. ``(name, bytes)`` of the original uploads); default the two arrays.
        model_metadata: Patient metadata per visit (``Predictor.predict``'s dicts, or None each) for a
            model that fuses it; None for none.
        config: Registration settings.

    Returns:
        The measures, images and flags. A pair that cannot be aligned (unrelated photos, too little
        skin texture) is a result with ``aligned`` False and the reason as its first flag.

    Raises:
        FollowUpError: An input is not an RGB image, or the photos align but no lesion can be
            found in the baseline, or none where it lies in the aligned follow-up (the message
            names the image).
    """
    import cv2

    config = config or RegistrationConfig()
    for image, name in ((before, before_name), (after, after_name)):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise FollowUpError(f"expected an HxWx3 uint8 RGB image, got {getattr(image, 'shape', type(image))}", name)
    small_b, fb = work_copy(before, config.work_side)
    small_a, _ = work_copy(after, config.work_side)
    segs: dict[str, LesionSegmentation | FollowUpError] = {}
    for key, image, name in (("before", small_b, before_name), ("after", small_a, after_name)):
        try:
            segs[key] = segment_lesion(image, name)
        except FollowUpError as err:
            segs[key] = err
    seg_b, seg_a = segs["before"], segs["after"]
    registration = register_visits(small_b, small_a, getattr(seg_b, "mask", None), getattr(seg_a, "mask", None),
                                   config)
    result = FollowUpResult(before_name, after_name, registration.aligned, registration.reason, registration,
                            before=small_b)
    result.before_lesion = seg_b if isinstance(seg_b, LesionSegmentation) else None
    result.after_lesion = seg_a if isinstance(seg_a, LesionSegmentation) else None
    if predictor is not None:
        _model_outputs(predictor, model_inputs or (before, after), model_metadata, result)
    if not registration.aligned:
        result.flags.insert(0, str(registration.reason))
        result.flags.extend(str(s) for s in (seg_b, seg_a) if isinstance(s, FollowUpError))
        return result
    if isinstance(seg_b, FollowUpError):
        raise seg_b
    # The follow-up's own segmentation only helped to set its lesion's features aside: the follow-up
    # lesion that is measured is cut by the baseline's rule below, where the baseline lesion lies.

    matrix = registration.matrix
    height, width = small_b.shape[:2]
    warped = cv2.warpAffine(small_a, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    common = common_view(small_b.shape, invert(matrix), small_a.shape) & valid_pixels(small_b)
    after_own = seg_a.mask if isinstance(seg_a, LesionSegmentation) else np.zeros(small_a.shape[:2], bool)
    rough_after = cv2.warpAffine(after_own.astype(np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST)
    margin = max(2, round(min(height, width) / 64))
    skin = common & ~_dilate(seg_b.mask | rough_after.astype(bool), margin)
    gains = lighting_gains(small_b, warped, skin)
    matched = np.clip(warped.astype(np.float32) * gains.astype(np.float32), 0, 255)
    valid_after = common & valid_pixels(matched)
    mask_after = lesion_mask(matched, seg_b.score, valid_after, reference=seg_b.mask & common)
    mask_before = seg_b.mask & common
    if not mask_before.any():
        raise FollowUpError("the follow-up photo does not show the baseline lesion (it lies outside the part of "
                            "the skin both photos show)", after_name)
    if not mask_after.any():
        raise FollowUpError("no lesion found where the baseline lesion lies after alignment", after_name)
    before_m = measure(small_b, mask_before, seg_b.score, common)
    after_m = measure(matched, mask_after, seg_b.score, valid_after)

    result.area_before_px, result.area_after_px = before_m.area_px / fb**2, after_m.area_px / fb**2
    result.area_change = after_m.area_px / before_m.area_px - 1.0
    result.diameter_before_px, result.diameter_after_px = before_m.diameter_px / fb, after_m.diameter_px / fb
    result.diameter_change = after_m.diameter_px / before_m.diameter_px - 1.0
    result.border_change = after_m.irregularity - before_m.irregularity
    result.colour_change = float(np.linalg.norm(np.subtract(after_m.mean_lab, before_m.mean_lab)))
    lab_b = to_lab(apply_gains(small_b, seg_b.score.gains))
    lab_a = to_lab(apply_gains(matched, seg_b.score.gains))
    delta = cv2.GaussianBlur(np.linalg.norm(lab_a - lab_b, axis=2).astype(np.float32), (0, 0), 1.0)
    union = (mask_before | mask_after) & common
    result.change_map = np.where(union, delta, 0.0).astype(np.float32)
    result.after_aligned = np.rint(matched).astype(np.uint8)
    result.common, result.before_mask, result.after_mask = common, mask_before, mask_after

    result.flags[:0] = change_flags(result)
    edge = frame_edge(common, 1)
    if (mask_before & edge).any() or (mask_after & edge).any():
        result.flags.append("the lesion reaches the edge of the skin both photos show: sizes are measured on the "
                            "common part only")
    if registration.used_lesion:
        result.flags.append("aligned on the lesion itself (too little skin texture around it): growth may be "
                            "underestimated")
    # The working-resolution map in the photos' own pixels: original -> working, align, working -> original.
    result.matrix = compose(compose(resize_matrix(after.shape, small_a.shape), matrix),
                            invert(resize_matrix(before.shape, small_b.shape)))
    return result
