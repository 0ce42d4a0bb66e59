"""Registration of a follow-up photo onto its baseline: where each follow-up pixel lies in the baseline.

Two photos of one lesion taken months apart differ by how the dermatoscope was held: a rotation,
a shift and a zoom, i.e. a similarity transform. It is estimated in three steps, all at a fixed
working resolution (longer side :attr:`RegistrationConfig.work_side`, never upsampled) and mapped
back to the images' own pixels:

1. **Features.** SIFT keypoints (scale- and rotation-invariant, robust to lighting) on both
   photos, matched with Lowe's ratio test.
2. **Skin first.** The lesion may have grown, so matches *on* the lesion follow the growth, not
   the camera: a robust fit over them would take growth for zoom and cancel it. Matches inside
   either photo's (dilated) lesion are therefore set aside and the similarity is fitted with
   RANSAC (``cv2.estimateAffinePartial2D``) on the skin matches only; only when the skin has too
   few of them are the lesion's matches used, and the result says so.
3. **ECC refinement.** ``cv2.findTransformECCWithMask`` polishes the fit to sub-pixel accuracy by
   maximising the correlation of the two photos' grey levels over the skin (both lesions masked
   out), starting from the RANSAC estimate; the refinement is kept only when it raises the
   correlation and stays close to that estimate.

A pair is declared **not aligned**, with the reason, instead of returning a wrong overlay when
there are too few consistent matches (unrelated photos rarely share even six), too small a share
of the matches agree, the scale is implausible (outside :attr:`RegistrationConfig.scale_range`),
the transform folds or shears, or the aligned photos do not correlate at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from backend.followup.segmentation import valid_pixels


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of :func:`register_visits` (defaults tuned on the follow-up benchmark).

    Attributes:
        work_side: Longer side, in pixels, of the working resolution (images are never upsampled).
        contrast: SIFT contrast threshold (lower finds more keypoints on faint skin texture).
        ratio: Lowe's ratio-test threshold for a feature match.
        ransac_px: RANSAC inlier distance, working-resolution pixels.
        min_inliers: Fewest RANSAC inliers of an alignment fitted on all matches.
        min_skin_inliers: Fewest inliers of a fit on the skin matches alone (they agree with the
            camera only, so fewer suffice).
        min_inlier_ratio: Smallest share of the fitted matches that must be inliers.
        scale_range: Plausible follow-up-to-baseline scale (zoom) range.
        lesion_margin: Dilation of the lesion masks when setting lesion matches aside, as a share
            of the working image's shorter side.
        min_correlation: Smallest correlation of the smoothed grey levels of the aligned photos over
            the baseline (a last sanity check: photos of two different centred lesions still
            correlate, so unrelated pairs are told apart by the feature matches above all).
        refine: Polish the fit with ECC.
        exclude_lesion: Set the lesion's matches aside (off only for the benchmark's baseline).
    """

    work_side: int = 512
    contrast: float = 0.005
    ratio: float = 0.9
    ransac_px: float = 2.5
    min_inliers: int = 10
    min_skin_inliers: int = 6
    min_inlier_ratio: float = 0.15
    scale_range: tuple[float, float] = (0.5, 2.0)
    lesion_margin: float = 0.04
    min_correlation: float = 0.2
    refine: bool = True
    exclude_lesion: bool = True


@dataclass
class Registration:
    """How the follow-up maps onto the baseline, or why it could not be aligned.

    Attributes:
        aligned: Whether a trustworthy alignment was found.
        matrix: 2x3 map from follow-up to baseline pixel coordinates (``cv2.warpAffine(after, matrix,
            baseline size)`` gives the aligned follow-up); None when not aligned.
        reason: Why the pair is not aligned (None when it is).
        matches: Feature matches passing the ratio test (the set fitted).
        inliers: RANSAC inliers among them.
        inlier_ratio: ``inliers / matches``.
        scale: Follow-up-to-baseline scale at the working resolution (< 1: the follow-up was taken
            zoomed in).
        rotation_deg: Rotation of ``matrix``, degrees counter-clockwise on screen.
        correlation: Correlation of the aligned skin grey levels (lesions masked out; None when not
            computed). Low for bare skin even when the alignment is right: a diagnostic, not a test.
        refined: Whether ECC refinement was kept.
        used_lesion: Whether the fit had to use matches on the lesion (growth may be underestimated).
        details: Diagnostics (ECC shift and correlation, overall correlation).
    """

    aligned: bool
    matrix: np.ndarray | None
    reason: str | None = None
    matches: int = 0
    inliers: int = 0
    inlier_ratio: float = 0.0
    scale: float = float("nan")
    rotation_deg: float = float("nan")
    correlation: float | None = None
    refined: bool = False
    used_lesion: bool = False
    details: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (matrix as nested lists)."""
        def num(value: float | None, digits: int = 4) -> float | None:
            return None if value is None or not math.isfinite(value) else round(float(value), digits)

        return {
            "aligned": self.aligned, "reason": self.reason,
            "matrix": None if self.matrix is None else [[round(float(v), 6) for v in row] for row in self.matrix],
            "matches": self.matches, "inliers": self.inliers, "inlier_ratio": num(self.inlier_ratio),
            "scale": num(self.scale), "rotation_deg": num(self.rotation_deg, 2), "correlation": num(self.correlation),
            "refined": self.refined, "used_lesion": self.used_lesion,
        }


# -- geometry helpers -----------------------------------------------------------------------------


def to3(matrix: np.ndarray) -> np.ndarray:
    """A 2x3 affine matrix as 3x3 homogeneous.

    Args:
        matrix: 2x3 affine matrix.
    """
    return np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (2x3).

    Args:
        matrix: 2x3 affine matrix (invertible).
    """
    return np.linalg.inv(to3(matrix))[:2]


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The 2x3 map applying ``first`` then ``second``.

    Args:
        first: 2x3 map applied first.
        second: 2x3 map applied to its result.
    """
    return (to3(second) @ to3(first))[:2]


def resize_matrix(original: tuple[int, ...], resized: tuple[int, ...]) -> np.ndarray:
    """2x3 map from original to resized pixel coordinates, as ``cv2.resize`` samples (pixel centres).

    Args:
        original: Shape of the original image.
        resized: Shape of the resized image (each axis scaled by its own exact factor).
    """
    fx, fy = resized[1] / original[1], resized[0] / original[0]
    return np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points ``(x, y)`` with a 2x3 matrix.

    Args:
        matrix: 2x3 affine matrix.
        points: ``(N, 2)`` points.
    """
    points = np.asarray(points, np.float64)
    return points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def similarity_parts(matrix: np.ndarray) -> tuple[float, float, float]:
    """Scale, rotation and anisotropy (singular-value ratio, 1 for a similarity) of a 2x3 map.

    The rotation is in degrees counter-clockwise as seen on screen (y pointing down), the
    convention of ``cv2.getRotationMatrix2D``.

    Args:
        matrix: 2x3 affine matrix.
    """
    linear = np.asarray(matrix, np.float64)[:, :2]
    singular = np.linalg.svd(linear, compute_uv=False)
    scale = float(math.sqrt(abs(np.linalg.det(linear))))
    rotation = math.degrees(math.atan2(linear[0, 1] - linear[1, 0], linear[0, 0] + linear[1, 1]))
    return scale, rotation, float(singular[0] / max(singular[1], 1e-12))


def work_copy(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``image`` scaled down so its longer side is at most ``side`` (area interpolation), and the factor.

    Args:
        image: HxWx3 uint8 image or HxW bool mask (masks use nearest-neighbour).
        side: Largest longer side.
    """
    import cv2

    height, width = image.shape[:2]
    factor = min(1.0, side / max(height, width))
    if factor == 1.0:
        return image, 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    interpolation = cv2.INTER_AREA if image.dtype != bool else cv2.INTER_NEAREST
    resized = cv2.resize(image.astype(np.uint8) if image.dtype == bool else image, size, interpolation=interpolation)
    return (resized.astype(bool) if image.dtype == bool else resized), size[0] / width


def grey(image: np.ndarray) -> np.ndarray:
    """Luma of an RGB uint8 image (uint8).

    Args:
        image: HxWx3 uint8 RGB.
    """
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


# -- the steps ------------------------------------------------------------------------------------


def _features(gray: np.ndarray, contrast: float) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    sift = cv2.SIFT_create(nfeatures=4000, contrastThreshold=contrast)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    points = np.array([kp.pt for kp in keypoints], np.float64).reshape(-1, 2)
    return points, descriptors


def _match(desc_a: np.ndarray | None, desc_b: np.ndarray | None, ratio: float) -> np.ndarray:
    """``(N, 2)`` index pairs (a, b) passing the ratio test, one-to-one."""
    import cv2

    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), int)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
    good = [(m.queryIdx, m.trainIdx) for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    seen: set[int] = set()
    unique = []
    for a, b in good:
        if b not in seen:
            seen.add(b)
            unique.append((a, b))
    return np.array(unique, int).reshape(-1, 2)


def _dilate(mask: np.ndarray | None, shape: tuple[int, int], radius: float) -> np.ndarray:
    import cv2

    if mask is None:
        return np.zeros(shape, bool)
    if radius < 0.5:
        return mask.astype(bool)
    side = 2 * max(1, round(radius)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _inside(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    xs = np.clip(np.rint(points[:, 0]).astype(int), 0, mask.shape[1] - 1)
    ys = np.clip(np.rint(points[:, 1]).astype(int), 0, mask.shape[0] - 1)
    return mask[ys, xs]


def _ransac(src: np.ndarray, dst: np.ndarray, threshold: float) -> tuple[np.ndarray | None, int]:
    import cv2

    if len(src) < 3:
        return None, 0
    matrix, inliers = cv2.estimateAffinePartial2D(
        src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC, ransacReprojThreshold=threshold,
        maxIters=5000, confidence=0.999, refineIters=20)
    if matrix is None or inliers is None:
        return None, 0
    return matrix.astype(np.float64), int(inliers.sum())


def skin_correlation(before: np.ndarray, after: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> float:
    """Correlation of the baseline grey levels and the aligned follow-up's over ``mask`` (baseline frame).

    Args:
        before: Baseline grey levels (HxW).
        after: Follow-up grey levels.
        matrix: 2x3 follow-up -> baseline map.
        mask: HxW bool baseline pixels to correlate over.
    """
    import cv2

    height, width = before.shape[:2]
    warped = cv2.warpAffine(after, matrix, (width, height), flags=cv2.INTER_LINEAR)
    seen = cv2.warpAffine(np.ones(after.shape[:2], np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST)
    use = mask & seen.astype(bool)
    if use.sum() < 50:
        return 0.0
    a, b = before[use].astype(np.float64), warped[use].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def image_correlation(before: np.ndarray, after: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> float:
    """Correlation of the smoothed grey levels of the baseline and the aligned follow-up over ``mask``.

    Smoothing (Gaussian, ~1% of the side) leaves the lesion and skin structure and drops the sensor
    noise, so two photos of one lesion correlate highly even where the lesion has grown.

    Args:
        before: Baseline grey levels (HxW).
        after: Follow-up grey levels.
        matrix: 2x3 follow-up -> baseline map.
        mask: HxW bool baseline pixels to correlate over.
    """
    import cv2

    sigma = max(1.0, min(before.shape[:2]) / 100)
    return skin_correlation(cv2.GaussianBlur(before, (0, 0), sigma), cv2.GaussianBlur(after, (0, 0), sigma),
                            matrix, mask)


def _refine(before: np.ndarray, after: np.ndarray, matrix: np.ndarray, before_skin: np.ndarray,
            after_skin: np.ndarray) -> np.ndarray | None:
    """ECC-refined follow-up -> baseline map (None when ECC fails or does not converge)."""
    import cv2

    warp = invert(matrix).astype(np.float32)  # ECC's warp maps template (baseline) to input (follow-up) coordinates
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    try:
        _, warp = cv2.findTransformECCWithMask(
            before, after, before_skin.astype(np.uint8), after_skin.astype(np.uint8), warp, cv2.MOTION_AFFINE,
            criteria, 5)
    except cv2.error:
        return None
    return invert(warp.astype(np.float64))


def register_visits(before: np.ndarray, after: np.ndarray, before_mask: np.ndarray | None = None,
                    after_mask: np.ndarray | None = None, config: RegistrationConfig | None = None) -> Registration:
    """Align a follow-up photo onto its baseline (see the module docstring).

    Args:
        before: Baseline, HxWx3 uint8 RGB.
        after: Follow-up, H'xW'x3 uint8 RGB (any size).
        before_mask: The baseline's lesion (HxW bool), whose matches are set aside; None to use all.
        after_mask: The follow-up's lesion (H'xW' bool), likewise.
        config: Settings; default :class:`RegistrationConfig`.

    Returns:
        The alignment, with ``aligned`` False and a plain-English ``reason`` when it is not trustworthy.
    """
    config = config or RegistrationConfig()
    small_b, _ = work_copy(before, config.work_side)
    small_a, _ = work_copy(after, config.work_side)
    gray_b, gray_a = grey(small_b), grey(small_a)
    mask_b = None if before_mask is None else work_copy(before_mask, config.work_side)[0]
    mask_a = None if after_mask is None else work_copy(after_mask, config.work_side)[0]
    points_b, desc_b = _features(gray_b, config.contrast)
    points_a, desc_a = _features(gray_a, config.contrast)
    pairs = _match(desc_a, desc_b, config.ratio)
    src, dst = points_a[pairs[:, 0]], points_b[pairs[:, 1]]
    result = Registration(aligned=False, matrix=None, matches=len(pairs))
    if len(pairs) < config.min_inliers:
        result.reason = f"could not align: only {len(pairs)} matching features (need {config.min_inliers})"
        return result

    # Skin matches first, with the lesions widened by the margin; where the skin is too bare for that,
    # with a narrower margin, then none; only then every match, the lesion's included.
    side = min(gray_b.shape)
    margins = (config.lesion_margin, config.lesion_margin / 2, 0.0) if config.exclude_lesion else ()
    for share in margins:
        skin = (~_inside(src, _dilate(mask_a, gray_a.shape, share * side))
                & ~_inside(dst, _dilate(mask_b, gray_b.shape, share * side)))
        matrix, inliers = _ransac(src[skin], dst[skin], config.ransac_px)
        fitted, needed = int(skin.sum()), config.min_skin_inliers
        if matrix is not None and inliers >= needed:
            break
    else:
        matrix, inliers = _ransac(src, dst, config.ransac_px)
        fitted, needed, result.used_lesion = len(pairs), config.min_inliers, config.exclude_lesion
    result.matches, result.inliers = fitted, inliers
    result.inlier_ratio = inliers / max(1, fitted)
    if matrix is None or inliers < needed:
        result.reason = (f"could not align: only {inliers} consistent feature matches (need {needed}); "
                         "the photos may show different lesions or too little skin texture")
        return result
    if result.inlier_ratio < config.min_inlier_ratio:
        result.reason = (f"could not align: only {result.inlier_ratio:.0%} of the feature matches agree "
                         f"(need {config.min_inlier_ratio:.0%}); the photos may show different lesions")
        return result

    skin_b = ~_dilate(mask_b, gray_b.shape, config.lesion_margin * side) & valid_pixels(small_b)
    skin_a = ~_dilate(mask_a, gray_a.shape, config.lesion_margin * side) & valid_pixels(small_a)
    correlation = skin_correlation(gray_b, gray_a, matrix, skin_b)
    if config.refine:
        refined = _refine(gray_b, gray_a, matrix, skin_b, skin_a)
        if refined is not None:
            grid = np.stack(np.meshgrid(np.linspace(0, gray_a.shape[1] - 1, 5),
                                        np.linspace(0, gray_a.shape[0] - 1, 5)), -1).reshape(-1, 2)
            moved = float(np.linalg.norm(apply(refined, grid) - apply(matrix, grid), axis=1).max())
            new_corr = skin_correlation(gray_b, gray_a, refined, skin_b)
            result.details.update({"ecc_shift_px": moved, "ecc_correlation": new_corr})
            if new_corr >= correlation and moved <= 4 * config.ransac_px:
                matrix, correlation, result.refined = refined, new_corr, True
    result.correlation = correlation

    # Back to the images' own pixels: original -> working (follow-up), map, working -> original (baseline).
    # The zoom is judged as if both photos had the same longer side, so a follow-up saved at twice the
    # resolution of its baseline is not mistaken for a 2x zoom: the working copies share that side, except
    # a photo smaller than it (never upsampled), whose size difference is divided out here.
    full = compose(compose(resize_matrix(after.shape, small_a.shape), matrix),
                   invert(resize_matrix(before.shape, small_b.shape)))
    scale, rotation, anisotropy = similarity_parts(matrix)
    scale *= max(small_a.shape[:2]) / max(small_b.shape[:2])
    result.matrix, result.scale, result.rotation_deg = full, scale, rotation
    lo, hi = config.scale_range
    if not lo <= scale <= hi or np.linalg.det(full[:, :2]) <= 0 or anisotropy > 1.15:
        result.matrix = None
        result.reason = (f"could not align: implausible camera change (scale {scale:.2f}, outside {lo}-{hi}, "
                         "or a mirrored/sheared fit); the photos may show different lesions")
        return result
    overall = image_correlation(gray_b, gray_a, matrix, valid_pixels(small_b))
    result.details["overall_correlation"] = overall
    if overall < config.min_correlation:
        result.matrix = None
        result.reason = (f"could not align: the aligned photos do not match (correlation {overall:.2f} < "
                         f"{config.min_correlation}); the photos may show different lesions")
        return result
    result.aligned = True
    return result
