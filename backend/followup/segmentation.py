"""Lesion segmentation of one dermoscopic image and the shape and colour measures follow-up compares.

The method is classic and training-free, so it is deterministic, fast on a CPU and behaves the same
on any model bundle:

1. **Valid pixels.** The black frame or vignette of many dermatoscopes (near-black pixels connected
   to the image edge, see :func:`valid_pixels`) is neither lesion nor skin and is left out of
   every statistic.
2. **Colour constancy.** Shades of Gray (Finlayson & Trezzi, 2004; Minkowski norm ``p = 6``) gives
   one gain per channel that makes the estimated illuminant grey, so the score below does not depend
   on the camera's white balance.
3. **Lesion score.** ``255 - min(R, G, B)`` of the corrected image (see :func:`lesion_score`): pigment
   and blood absorb at least one channel strongly while skin reflects all three, so the darkest
   channel separates lesion from skin whatever the lesion's hue (brown, blue-grey, red).
   A grey-level opening with a disc wider than a hair removes thin dark lines (hairs, ruler
   ticks) and a Gaussian blur removes sensor noise and pigment-network texture.
4. **Threshold.** Otsu's threshold over the valid pixels' scores, refined by Kittler and
   Illingworth's minimum-error threshold searched between Otsu's and the lesion class mean: Otsu
   assumes two classes of equal spread and so cuts into the broad skin class when the lesion is
   small; the minimum-error threshold models each class's own spread and share. The gains and
   threshold form a :class:`ScoreModel`, reused to cut a follow-up exactly like its baseline
   (:mod:`backend.followup.change`).
5. **Clean-up.** Binary opening and closing with a disc of ~1.5% of the image side; then the lesion
   is the component whose *core* (what survives an opening with a disc of ~3% of the side, so
   hairs and ruler grids have none) has the largest area weighted by closeness to the image centre
   (a dermoscopic photo is centred on its lesion), components hugging the frame penalised; the
   core is grown back to the mask's outline within that radius and holes are filled (regression
   areas are lesion too). An image whose lesion stands less than :data:`MIN_CONTRAST` grey levels
   above the skin has no lesion.

Measures of the chosen mask: area, maximum Feret diameter (largest distance between two convex
hull points), border irregularity ``1 - solidity`` (``1 - area / convex hull area``: 0 for a convex
outline, larger for notched or lobulated borders; it does not depend on the resolution, unlike
``perimeter^2 / (4 pi area)`` whose pixel perimeter grows with noise) and the mean colour inside the
lesion (RGB as photographed, CIE L*a*b* of the colour-constancy-corrected image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.errors import FollowUpError
from backend.followup.threshold import minimum_error_threshold, otsu_threshold

#: Pixels whose three channels are all below this grey level, connected to the image edge, are frame.
FRAME_LEVEL: int = 20
#: Minkowski norm of the Shades of Gray illuminant estimate.
SOG_POWER: float = 6.0
#: Smallest lesion, as a share of the valid pixels; anything smaller is "no lesion found".
MIN_AREA_SHARE: float = 0.002
#: Smallest lesion contrast (mean lesion score minus median skin score, grey levels) that counts as a lesion;
#: the faintest of 100 real lesions checked stood 25 above its skin, plain or strongly textured skin < 16.
MIN_CONTRAST: float = 20.0
#: ``kittler`` refines Otsu's threshold with the minimum-error one (see :func:`score_model`); ``otsu`` does not.
THRESHOLD_METHOD: str = "kittler"
#: Radius of the grey-level opening that removes hairs and ruler lines, as a share of the shorter side.
HAIR_WIDTH: float = 1 / 128
#: Gaussian smoothing of the score, as a share of the shorter side.
SMOOTHING: float = 1 / 170
#: Radius of the binary opening and closing of the mask, as a share of the shorter side.
CLEAN_RADIUS: float = 1 / 64
#: Radius of the opening that finds each component's core (thin structures have none), share of the side.
CORE_RADIUS: float = 1 / 32


@dataclass(frozen=True)
class ScoreModel:
    """How an image's lesion score is made and cut: reused to segment a follow-up like its baseline.

    Attributes:
        gains: Shades of Gray gain of each RGB channel (multiplies the image before scoring).
        threshold: Score above which a pixel is lesion (the threshold of the image it came from).
    """

    gains: tuple[float, float, float]
    threshold: float


@dataclass
class LesionSegmentation:
    """The lesion of one image and its measures (pixel units of the image that was segmented).

    Attributes:
        mask: HxW bool, True on the lesion.
        area_px: Lesion area in pixels.
        diameter_px: Maximum Feret diameter (largest extent in any direction) in pixels.
        irregularity: Border irregularity ``1 - solidity`` (0 for a convex outline).
        centroid: Lesion centroid ``(x, y)`` in pixels.
        mean_rgb: Mean RGB inside the lesion, as photographed (0-255).
        mean_lab: Mean CIE L*a*b* inside the lesion of the colour-constancy-corrected image
            (L* 0-100, D65 white).
        touches_border: Whether the lesion reaches the edge of the valid image area (it may continue
            outside the photo, so its size is a lower bound).
        score: How the lesion score was made and cut (reusable for a follow-up image).
    """

    mask: np.ndarray
    area_px: int
    diameter_px: float
    irregularity: float
    centroid: tuple[float, float]
    mean_rgb: tuple[float, float, float]
    mean_lab: tuple[float, float, float]
    touches_border: bool
    score: ScoreModel

    def to_dict(self) -> dict[str, object]:
        """The measures (no mask) as JSON-ready values."""
        return {
            "area_px": int(self.area_px), "diameter_px": round(float(self.diameter_px), 2),
            "irregularity": round(float(self.irregularity), 4),
            "centroid": [round(float(v), 2) for v in self.centroid],
            "mean_rgb": [round(float(v), 2) for v in self.mean_rgb],
            "mean_lab": [round(float(v), 2) for v in self.mean_lab],
            "touches_border": bool(self.touches_border),
        }


# -- colour ---------------------------------------------------------------------------------------


def valid_pixels(image: np.ndarray) -> np.ndarray:
    """HxW bool: True except on the black frame or vignette of the photo.

    The frame is the near-black pixels (every channel below :data:`FRAME_LEVEL`) connected to the
    image edge, widened by the ~1% of the side where JPEG and resizing blur it into the skin; a
    black spot inside a lesion is not frame.

    Args:
        image: HxWx3 RGB (uint8 or float 0-255).
    """
    import cv2

    dark = (np.asarray(image).max(axis=2) < FRAME_LEVEL).astype(np.uint8)
    if not dark.any():
        return np.ones(dark.shape, bool)
    _, labels = cv2.connectedComponents(dark, connectivity=8)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    frame = np.isin(labels, edge_labels[edge_labels > 0])
    if not frame.any():
        return np.ones(dark.shape, bool)
    frame = cv2.dilate(frame.astype(np.uint8), _disc(max(1.0, min(dark.shape) / 100))).astype(bool)
    return ~frame


def shades_of_gray_gains(image: np.ndarray, valid: np.ndarray | None = None, power: float = SOG_POWER
                         ) -> tuple[float, float, float]:
    """Per-channel gains that make the Shades of Gray illuminant estimate of ``image`` neutral grey.

    Args:
        image: HxWx3 uint8 RGB.
        valid: HxW bool of the pixels to estimate from (default all).
        power: Minkowski norm (1 = grey world, infinity = max-RGB).

    Returns:
        Gains whose mean is 1, so the corrected image keeps its overall brightness.

    Unlike :func:`backend.data.transforms.shades_of_gray` (the model's preprocessing), this returns
    the gains, so a follow-up can be corrected with its baseline's, and leaves the black frame out
    of the estimate; it also keeps albumentations out of this module's imports.
    """
    pixels = image.reshape(-1, 3).astype(np.float64) / 255.0
    if valid is not None and valid.any():
        pixels = pixels[valid.reshape(-1)]
    illuminant = np.power(np.mean(np.power(pixels, power), axis=0), 1.0 / power)
    illuminant = np.maximum(illuminant, 1e-6)
    gains = illuminant.mean() / illuminant
    return (float(gains[0]), float(gains[1]), float(gains[2]))


def apply_gains(image: np.ndarray, gains: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """``image * gains`` per channel as float32 in ``[0, 255]``.

    Args:
        image: HxWx3 RGB.
        gains: Gain of each channel.
    """
    return np.clip(image.astype(np.float32) * np.asarray(gains, np.float32), 0.0, 255.0)


def to_lab(image: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65; L* 0-100, a*/b* about -128..127) of an RGB image with values 0-255.

    Args:
        image: HxWx3 RGB, values 0-255.
    """
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image, np.float32) / 255.0, cv2.COLOR_RGB2Lab)


# -- score and mask -------------------------------------------------------------------------------


def _disc(radius: float) -> np.ndarray:
    import cv2

    side = 2 * max(1, round(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))


def lesion_score(corrected: np.ndarray) -> np.ndarray:
    """The lesion score of a colour-corrected image: high on lesion, low on skin (float32, HxW).

    ``255 - min(R, G, B)`` with thin dark lines (hairs, ruler ticks) removed by a grey-level
    opening and texture smoothed by a Gaussian blur, both scaled with the image side.

    Args:
        corrected: HxWx3 float RGB (0-255) after colour constancy.
    """
    import cv2

    score = 255.0 - corrected.min(axis=2).astype(np.float32)
    side = min(score.shape)
    score = cv2.morphologyEx(score, cv2.MORPH_OPEN, _disc(side * HAIR_WIDTH))
    return cv2.GaussianBlur(score, (0, 0), max(1.0, side * SMOOTHING))


def frame_edge(valid: np.ndarray, width: int = 1) -> np.ndarray:
    """HxW bool: the valid pixels within ``width`` px of the image edge or of the black frame.

    Args:
        valid: HxW bool valid image area.
        width: Width of the band, pixels.
    """
    import cv2

    inner = cv2.erode(valid.astype(np.uint8), _disc(width), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return valid & ~inner.astype(bool)


def clean_mask(raw: np.ndarray) -> np.ndarray:
    """Binary opening then closing with a disc of ~1.5% of the image side (drops specks, bridges gaps).

    Args:
        raw: HxW bool thresholded pixels.
    """
    import cv2

    kernel = _disc(min(raw.shape) * CLEAN_RADIUS)
    mask = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region not connected to the image edge filled.

    Args:
        mask: HxW bool.
    """
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def pick_component(mask: np.ndarray, valid: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """The part of ``mask`` that is the lesion (empty mask when there is none).

    Components are judged by their *core*: what survives an opening with a disc of
    :data:`CORE_RADIUS` of the side, so a ruler grid or a hair touching the frame, however long,
    weighs nothing, and is cut off where it touches the lesion. The chosen core is grown back to
    the mask's own outline within that radius, so the border keeps its detail.

    Args:
        mask: HxW bool candidate pixels.
        valid: HxW bool valid image area (components hugging its edge are penalised).
        reference: Where the lesion was seen before (HxW bool, e.g. the baseline's mask in the same
            frame): when given, every core overlapping it is kept, so the same lesion is followed
            even when it now falls apart in pieces or another dark spot is larger or more central.
    """
    import cv2

    radius = _disc(min(mask.shape) * CORE_RADIUS)
    core = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, radius)
    if not core.any():
        core = mask.astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(core, connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    ids = np.arange(1, count)
    chosen = None
    if reference is not None and reference.any():
        overlap = np.bincount(labels[reference], minlength=count)[1:]
        if overlap.max() > 0:
            chosen = np.isin(labels, ids[overlap > 0])
    if chosen is None:
        areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
        height, width = mask.shape
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        distance = np.linalg.norm((centroids[1:] - centre) / np.array([width, height]), axis=1)
        edge = frame_edge(valid, 2)
        on_edge = np.bincount(labels[edge], minlength=count)[1:] / max(1, int(edge.sum()))
        weights = areas * np.exp(-((distance / 0.3) ** 2)) * (1.0 - np.clip(2.0 * on_edge, 0.0, 0.9))
        chosen = labels == ids[int(np.argmax(weights))]
    grown = mask & cv2.dilate(chosen.astype(np.uint8), radius).astype(bool)
    # Keep only the pieces of the outline connected to the chosen core.
    count, labels = cv2.connectedComponents(grown.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[chosen & grown])
    return np.isin(labels, keep[keep > 0])


def score_model(image: np.ndarray, valid: np.ndarray | None = None) -> ScoreModel:
    """The colour-constancy gains and the threshold of ``image`` (steps 2-4 of the module docstring).

    Args:
        image: HxWx3 uint8 RGB.
        valid: HxW bool valid pixels (default :func:`valid_pixels`).
    """
    valid = valid_pixels(image) if valid is None else valid
    gains = shades_of_gray_gains(image, valid)
    score = lesion_score(apply_gains(image, gains))
    values = score[valid] if valid.any() else score.reshape(-1)
    threshold, _ = otsu_threshold(values)
    if THRESHOLD_METHOD == "kittler":
        upper = values[values > threshold]
        kittler = minimum_error_threshold(values, threshold, float(upper.mean()) if upper.size else threshold)
        if kittler is not None:
            threshold = kittler
    return ScoreModel(gains, threshold)


def lesion_mask(image: np.ndarray, model: ScoreModel, valid: np.ndarray | None = None,
                reference: np.ndarray | None = None) -> np.ndarray:
    """Cut ``image``'s lesion score at ``model``'s threshold and keep the lesion (steps 3-5).

    Args:
        image: HxWx3 RGB (uint8 or float 0-255).
        model: Gains and threshold to use (the image's own, or its baseline's).
        valid: HxW bool area to segment in (default: all but the black frame).
        reference: Mask of the lesion seen before in the same frame, to follow that lesion.
    """
    valid = valid_pixels(np.asarray(image, np.float32)) if valid is None else valid
    score = lesion_score(apply_gains(image, model.gains))
    mask = clean_mask((score > model.threshold) & valid)
    return fill_holes(pick_component(mask, valid, reference)) & valid


# -- measures -------------------------------------------------------------------------------------


def max_feret_diameter(mask: np.ndarray) -> float:
    """Largest distance between two points of ``mask`` (pixel centres, + 1 px for the pixels' extent).

    Args:
        mask: HxW bool lesion.
    """
    import cv2

    points = cv2.findNonZero(mask.astype(np.uint8))
    if points is None:
        return 0.0
    hull = cv2.convexHull(points).reshape(-1, 2).astype(np.float64)
    if len(hull) == 1:
        return 1.0
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=2)).max()) + 1.0


def irregularity(mask: np.ndarray) -> float:
    """Border irregularity ``1 - solidity`` = ``1 - area / convex hull area`` (0 for a convex lesion).

    Args:
        mask: HxW bool lesion.
    """
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0.0
    points = np.vstack(contours)
    hull = cv2.convexHull(points)
    # Areas of pixel outlines: contour area misses half a pixel along the edge, on both alike.
    hull_area = cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2 + 1.0
    return float(np.clip(1.0 - mask.sum() / hull_area, 0.0, 1.0))


def measure(image: np.ndarray, mask: np.ndarray, model: ScoreModel, valid: np.ndarray) -> LesionSegmentation:
    """All measures of the lesion ``mask`` of ``image`` (colour-corrected with ``model``'s gains).

    Args:
        image: HxWx3 RGB the mask belongs to.
        mask: HxW bool lesion (not empty).
        model: Score model whose gains correct the colours.
        valid: HxW bool valid area (for the border check).
    """
    ys, xs = np.nonzero(mask)
    pixels = np.asarray(image, np.float32)[mask]
    lab = to_lab(apply_gains(image, model.gains))[mask]
    edge = frame_edge(valid, 1)
    return LesionSegmentation(
        mask=mask, area_px=int(mask.sum()), diameter_px=max_feret_diameter(mask), irregularity=irregularity(mask),
        centroid=(float(xs.mean()), float(ys.mean())),
        mean_rgb=tuple(float(v) for v in pixels.mean(axis=0)),  # type: ignore[arg-type]
        mean_lab=tuple(float(v) for v in lab.mean(axis=0)),  # type: ignore[arg-type]
        touches_border=bool((mask & edge).any()), score=model)


def segment_lesion(image: np.ndarray, name: str = "image") -> LesionSegmentation:
    """Segment the lesion of one dermoscopic image and measure it (see the module docstring).

    Args:
        image: HxWx3 uint8 RGB.
        name: What errors call the image (its file or upload name).

    Returns:
        The lesion's mask and measures, in this image's pixels.

    Raises:
        FollowUpError: No lesion can be told from the skin (too little contrast, or nothing but
            specks); the message names ``name``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 16:
        raise FollowUpError(f"expected an RGB image of at least 16 x 16 pixels, got shape {image.shape}", name)
    valid = valid_pixels(image)
    if valid.sum() < 0.25 * valid.size:
        raise FollowUpError("no lesion found: the image is almost entirely black", name)
    if int(np.ptp(image[valid], axis=0).max()) < 2:  # per channel: a uniform brown is uniform too
        raise FollowUpError("no lesion found: the picture is one uniform colour", name)
    model = score_model(image, valid)
    mask = lesion_mask(image, model, valid)
    if mask.sum() < MIN_AREA_SHARE * valid.sum():
        raise FollowUpError("no lesion found: only specks darker than the skin", name)
    score = lesion_score(apply_gains(image, model.gains))
    skin = valid & ~mask
    contrast = float(score[mask].mean() - np.median(score[skin])) if skin.any() else 0.0
    if contrast < MIN_CONTRAST:
        raise FollowUpError(f"no lesion found: nothing stands out from the skin (contrast {contrast:.0f} < "
                            f"{MIN_CONTRAST:.0f} grey levels)", name)
    return measure(image, mask, model, valid)
