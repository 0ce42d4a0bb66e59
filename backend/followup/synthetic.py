"""Synthetic follow-up visits with known truth: what the follow-up benchmark and tests measure against.

A real second visit of the same lesion, with the exact camera motion and lesion growth known, does
not exist in public data, so one is made from a real baseline image:

1. **Growth.** The baseline lesion (segmented with :func:`~backend.followup.segmentation.segment_lesion`;
   that mask *is* the truth) is removed from the skin by inpainting, and the lesion's pixels,
   together with a thin rim of surrounding skin so its soft edge is kept, are scaled by ``growth``
   (linear size) about the lesion centroid and composited back with a feathered alpha. The true
   grown mask is the scaled mask, so the true area change is ``growth**2 - 1`` up to the image edge.
   ``growth == 1`` leaves the image untouched.
2. **New photo.** The grown image is rotated, zoomed and shifted (a similarity about the image
   centre) with reflected borders (a photo shows skin all the way to its edge, never black
   corners; the baseline's own black frame, if any, is inpainted first), multiplied by a
   brightness and a per-channel white-balance gain (a diagonal, von Kries model of a change of
   lighting and camera), and given fresh sensor noise.

The true area change is measured on the true masks in the baseline frame, over the part of the skin
both photos show (what :func:`~backend.followup.change.compare_visits` measures too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.followup.segmentation import segment_lesion, valid_pixels


@dataclass(frozen=True)
class FollowUpParams:
    """How a synthetic follow-up differs from its baseline.

    Attributes:
        angle_deg: Camera rotation, degrees counter-clockwise.
        zoom: Magnification of the follow-up photo (>1: the lesion looks bigger).
        shift: Translation ``(dx, dy)`` as a share of the image's longer side.
        growth: Linear growth of the lesion about its centroid (1 = unchanged; area x growth^2).
        brightness: Overall exposure factor.
        colour: White-balance gain of each RGB channel.
        noise: Standard deviation of the added sensor noise, grey levels.
    """

    angle_deg: float = 0.0
    zoom: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    growth: float = 1.0
    brightness: float = 1.0
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 2.0


@dataclass
class SyntheticFollowUp:
    """A synthetic follow-up image and its truth.

    Attributes:
        image: The follow-up photo, HxWx3 uint8 RGB, same size as the baseline.
        matrix: True 2x3 map from baseline pixel coordinates to follow-up pixel coordinates.
        before_mask: The baseline lesion (HxW bool, baseline frame).
        after_mask: The grown lesion in the baseline frame (before the camera motion).
        common: HxW bool, the baseline pixels the follow-up photo also shows.
        true_area_change: ``|after & common| / |before & common| - 1`` (NaN when the follow-up does
            not show the baseline lesion at all: there is nothing to measure).
        params: The parameters used.
    """

    image: np.ndarray
    matrix: np.ndarray
    before_mask: np.ndarray
    after_mask: np.ndarray
    common: np.ndarray
    true_area_change: float
    params: FollowUpParams


def random_params(rng: np.random.Generator, growth: float | None = None, max_angle: float = 30.0,
                  zoom: tuple[float, float] = (0.8, 1.25), max_shift: float = 0.08) -> FollowUpParams:
    """Random follow-up parameters within the benchmark's ranges.

    Args:
        rng: Random generator (seeded by the caller for reproducible pairs).
        growth: Linear growth; default uniform in ``[1.0, 1.5]``.
        max_angle: Largest rotation, degrees (either direction).
        zoom: Range of the zoom, drawn log-uniformly.
        max_shift: Largest shift as a share of the image side (either direction, per axis).
    """
    return FollowUpParams(
        angle_deg=float(rng.uniform(-max_angle, max_angle)),
        zoom=float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1])))),
        shift=(float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift))),
        growth=float(rng.uniform(1.0, 1.5)) if growth is None else float(growth),
        brightness=float(rng.uniform(0.8, 1.2)),
        colour=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)),  # type: ignore[arg-type]
    )


def camera_matrix(shape: tuple[int, ...], params: FollowUpParams) -> np.ndarray:
    """The 2x3 similarity baseline -> follow-up: rotation and zoom about the centre, then the shift.

    ``params.shift`` is a share of the image's longer side.

    Args:
        shape: Shape of the baseline image.
        params: The follow-up's camera motion.
    """
    import cv2

    height, width = shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), params.angle_deg, params.zoom)
    matrix[:, 2] += np.asarray(params.shift) * max(height, width)
    return matrix


def grow_lesion(image: np.ndarray, mask: np.ndarray, growth: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the lesion of ``image`` by ``growth`` about its centroid over inpainted skin.

    Args:
        image: HxWx3 uint8 RGB.
        mask: HxW bool lesion mask of ``image``.
        growth: Linear scale factor (>= 1 in the benchmark; < 1 shrinks, leaving inpainted skin).

    Returns:
        The grown image and the grown (true) mask.
    """
    import cv2

    if growth == 1.0:
        return image.copy(), mask.copy()
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    centre = (float(xs.mean()), float(ys.mean()))
    scale = cv2.getRotationMatrix2D(centre, 0.0, growth)
    rim = max(2, round(min(height, width) / 64))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1))
    region = cv2.dilate(mask.astype(np.uint8), kernel)
    skin = cv2.inpaint(image, cv2.dilate(region, kernel), 5, cv2.INPAINT_TELEA)
    alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), rim / 2)
    size = (width, height)
    moved = cv2.warpAffine(image, scale, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    alpha = cv2.warpAffine(alpha, scale, size, flags=cv2.INTER_LINEAR)[..., None]
    grown = moved.astype(np.float32) * alpha + skin.astype(np.float32) * (1.0 - alpha)
    grown_mask = cv2.warpAffine(mask.astype(np.float32), scale, size, flags=cv2.INTER_LINEAR) >= 0.5
    return np.clip(np.rint(grown), 0, 255).astype(np.uint8), grown_mask


def common_view(shape: tuple[int, ...], matrix: np.ndarray, out_shape: tuple[int, ...] | None = None,
                margin: float = 1.0) -> np.ndarray:
    """HxW bool over the first image: pixels that ``matrix`` maps inside the second image's frame.

    Args:
        shape: Shape of the first image (its frame is the output's).
        matrix: 2x3 map from first-image to second-image pixel coordinates.
        out_shape: Shape of the second image (default ``shape``).
        margin: Pixels kept clear of the second image's edge (interpolation needs neighbours).
    """
    height, width = shape[:2]
    out_h, out_w = (out_shape or shape)[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    mx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    my = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    return (mx >= margin) & (mx <= out_w - 1 - margin) & (my >= margin) & (my <= out_h - 1 - margin)


def make_follow_up(baseline: np.ndarray, params: FollowUpParams, mask: np.ndarray | None = None,
                   seed: int = 0) -> SyntheticFollowUp:
    """A synthetic follow-up photo of ``baseline``'s lesion and its truth (see the module docstring).

    Args:
        baseline: HxWx3 uint8 RGB baseline photo.
        params: Camera motion, growth and lighting of the follow-up.
        mask: The baseline lesion; default :func:`segment_lesion`'s.
        seed: Seed of the sensor noise.

    Raises:
        FollowUpError: No lesion can be found in ``baseline`` (when ``mask`` is not given).
    """
    import cv2

    if mask is None:
        mask = segment_lesion(baseline, "baseline").mask
    grown, grown_mask = grow_lesion(baseline, mask, params.growth)
    frame = ~valid_pixels(grown)
    if frame.any():  # a new photo has skin where the old one's black frame was: no mirrored frame lines
        grown = cv2.inpaint(grown, frame.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    matrix = camera_matrix(baseline.shape, params)
    height, width = baseline.shape[:2]
    photo = cv2.warpAffine(grown, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    photo = photo.astype(np.float32) * params.brightness * np.asarray(params.colour, np.float32)
    if params.noise > 0:
        photo += np.random.default_rng(seed).normal(0.0, params.noise, photo.shape).astype(np.float32)
    common = common_view(baseline.shape, matrix)
    before, after = int((mask & common).sum()), int((grown_mask & common).sum())
    return SyntheticFollowUp(
        image=np.clip(np.rint(photo), 0, 255).astype(np.uint8), matrix=matrix, before_mask=mask,
        after_mask=grown_mask, common=common, true_area_change=after / before - 1.0 if before else float("nan"),
        params=params)
