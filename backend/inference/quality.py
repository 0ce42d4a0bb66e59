"""Quality gate: flag images unlikely to be usable dermoscopy, with a reason, without refusing them.

Three kinds of checks, all cheap next to the network:

* **The file** (:func:`file_flags`): ``damaged``, a JPEG whose compressed picture data the decoder
  reports as corrupt (Pillow fills what it cannot read with flat colour or garbles it silently, so
  the pixels alone would pass; a strict libjpeg-turbo pass through ``simplejpeg`` at 1/8 scale finds it);
  ``transparent``, a PNG or TIFF with at least 1% (partly) transparent pixels, which decoding fills
  with white (a cut-out or an edited picture, not the photo).
* **Image statistics** on the decoded RGB image (:func:`image_flags`): ``tiny`` (short side below
  ``min_side``), ``too_dark`` / ``too_bright`` (mean grey level), ``blank`` (almost no contrast),
  ``blurred`` (variance of the Laplacian at <= 224 px, the classic focus measure), ``noise``
  (that variance far above the image's own grey-level variance: speckle, not a picture),
  ``no_colour`` (black and white: the model reads colour) and ``not_skin``
  (most pixels strongly saturated in colours skin and lesions do not have: greens, cyans, blues,
  purples). The colour check runs after the same Shades-of-Gray colour constancy the model applies,
  because several dermoscopes give real images a strong blue cast that colour constancy removes;
  a second, raw check catches images that are almost entirely one saturated cold colour.
* **Out of distribution** (:class:`FeatureStats`): the Mahalanobis distance of the image's pooled
  backbone features from the training split's feature mean, under a Ledoit-Wolf shrunk
  covariance (the shrinkage keeps the inverse well conditioned when there are fewer images than
  feature dimensions). The threshold is a percentile of held-out distances: each half of the
  fitting images is scored by statistics fitted on the other half, which is what a new in-domain
  image looks like to the final statistics, so in-domain images are not flagged just for not being
  training images.

Thresholds were set on real dermoscopic images (ISIC, HAM10000, Derm7pt): of 1,500 random ones,
one is flagged (``too_dark``, and it is); see :class:`QualityConfig`. The ``noise`` and ``no_colour``
limits sit outside every one of the 14,381 development images, none of which they flag (largest
noise ratio 6.2 against the limit 10; least colour 4.1 grey levels against 1.5); random noise scores
15-20 and a black-and-white picture 0-1.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from backend.data.transforms import shades_of_gray
from backend.errors import CheckpointError

#: Every flag code, in the order they are reported, with what it means.
FLAG_CODES: dict[str, str] = {
    "damaged": "damaged file",
    "transparent": "part of the picture transparent",
    "tiny": "image too small",
    "blank": "blank or uniform image",
    "too_dark": "too dark",
    "too_bright": "too bright / overexposed",
    "blurred": "blurred / out of focus",
    "noise": "noise, no clear picture",
    "no_colour": "no colour (black and white)",
    "not_skin": "colours unlike skin or a skin lesion",
    "out_of_distribution": "unlike the images the model was trained on",
}


@dataclass
class QualityConfig:
    """Thresholds of the image-statistics checks (grey levels are 0-255).

    Attributes:
        min_side: Shortest accepted side in pixels.
        blank_std: Grey-level standard deviation below which the image is blank.
        dark_mean: Mean grey level below which the image is too dark.
        bright_mean: Mean grey level above which the image is overexposed.
        blur_var: Variance of the Laplacian (grey image at ``blur_side`` px) below which it is blurred.
        blur_side: Short side the focus measure is computed at (never upsampled).
        noise_ratio: Variance of the Laplacian over the grey-level variance (both at ``blur_side``)
            above which the image is noise rather than a picture.
        min_chroma: Mean spread between the brightest and darkest colour channel of each pixel (grey
            levels, at 96 px) below which the image has no colour.
        cold_sat: Saturation (0-1) above which a cold-hued pixel counts as non-skin after colour constancy.
        cold_frac: Fraction of such pixels above which the image is ``not_skin``.
        raw_cold_sat: Saturation for the raw (uncorrected) check.
        raw_cold_frac: Fraction for the raw check.
        ood_enabled: Apply the out-of-distribution check when feature statistics are available.
    """

    min_side: int = 64
    blank_std: float = 4.0
    dark_mean: float = 30.0
    bright_mean: float = 235.0
    blur_var: float = 4.0
    blur_side: int = 224
    noise_ratio: float = 10.0
    min_chroma: float = 1.5
    cold_sat: float = 0.4
    cold_frac: float = 0.6
    raw_cold_sat: float = 0.6
    raw_cold_frac: float = 0.95
    ood_enabled: bool = True


@dataclass(frozen=True)
class QualityFlag:
    """One reason an image may not be usable: a stable ``code`` and a sentence in a clinician's words.

    The sentence says what is wrong and what to do, without measurement jargon.
    """

    code: str
    reason: str


#: libjpeg-turbo warnings (raised under ``strict``) that mean picture data is missing or garbled.
#: Harmless ones are not among them: "Invalid SOS parameters for sequential JPEG" (many phone
#: cameras) decodes to the full, right picture.
_DAMAGE_WORDS = ("premature end of data segment", "premature end of jpeg file", "bad huffman code",
                 "instead of rst", "inconsistent progression", "bad arithmetic code")
#: "N extraneous bytes before marker 0x..": the decoder stopped N bytes short of the next marker
#: (the end of a scan, the next scan of a progressive file, a table), i.e. it lost its place in
#: damaged data. Some cameras pad with a byte or two, harmlessly; damaged files of 300 flipped-byte
#: trials left 7 to 208 bytes (progressive ones up to 314, before 0xda or 0xc4).
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x[0-9a-f]{2}", re.IGNORECASE)
_PADDING_BYTES = 4


def jpeg_damage(data: bytes) -> str | None:
    """The decoder's complaint about a JPEG file's compressed data, or None when it decodes cleanly.

    Decodes at 1/8 scale (every coefficient is still read, so damage anywhere is found) with
    libjpeg-turbo's warnings raised as errors. Files that are not JPEG, and complaints that are
    not about damage (e.g. an unsupported colour conversion), give None: the normal decoder
    decides about those.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        simplejpeg.decode_jpeg(data, colorspace="RGB" if colorspace != "CMYK" else "CMYK", strict=True,
                               min_height=1, min_width=1)
    except ValueError as err:
        message = str(err)
        extraneous = _EXTRANEOUS.search(message)
        if extraneous:
            return message if int(extraneous.group(1)) > _PADDING_BYTES else None
        return message if any(word in message.lower() for word in _DAMAGE_WORDS) else None
    return None


#: Share of (partly) transparent pixels from which a picture is flagged: the decoder fills them with
#: white, which the model would read as skin. Photos have none; an opaque alpha band is not flagged.
TRANSPARENT_SHARE = 0.01


def transparent_share(data: bytes) -> float | None:
    """Share of pixels with alpha below 250 in a file with transparency data (None without any, or for JPEG)."""
    if data.startswith(b"\xff\xd8"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if not image.has_transparency_data:
                return None
            alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # the normal decoder reports what is wrong with such a file
    return float(np.mean(alpha < 250))


def file_flags(data: bytes | None) -> list[QualityFlag]:
    """Quality flags of the encoded file itself (empty without bytes or when it is intact)."""
    if not data:
        return []
    flags = []
    damage = jpeg_damage(data)
    if damage is not None:
        flags.append(QualityFlag("damaged", "The file is damaged: part of the picture may be missing, flat or "
                                            f"garbled (decoder: {damage}). Send the original file again."))
    share = transparent_share(data)
    if share is not None and share >= TRANSPARENT_SHARE:
        flags.append(QualityFlag("transparent", f"{share:.0%} of the picture is transparent and was filled with "
                                                "white, which the model would read as skin. Send the original "
                                                "photo, without transparency."))
    return flags


def _resize_short(image: np.ndarray, side: int) -> np.ndarray:
    """Downscale (never upscale) so the short side is at most ``side``."""
    import cv2

    h, w = image.shape[:2]
    short = min(h, w)
    if short <= side:
        return image
    scale = side / short
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _cold_fraction(image: np.ndarray, min_sat: float) -> float:
    """Fraction of visible pixels (value > 0.15) with a cold hue (65-295 degrees) and saturation > ``min_sat``."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV_FULL)
    hue = hsv[..., 0].astype(np.float32) * (360.0 / 256.0)
    sat = hsv[..., 1].astype(np.float32) / 255.0
    val = hsv[..., 2].astype(np.float32) / 255.0
    cold = (hue > 65.0) & (hue < 295.0) & (sat > min_sat) & (val > 0.15)
    return float(cold.mean())


def image_flags(image: np.ndarray, cfg: QualityConfig | None = None) -> list[QualityFlag]:
    """Image-statistics quality flags of one decoded image (empty when it looks usable).

    Args:
        image: ``(H, W, 3)`` uint8 RGB, as decoded (any size).
        cfg: Thresholds.
    """
    import cv2


    cfg = cfg or QualityConfig()
    h, w = image.shape[:2]
    flags: list[QualityFlag] = []
    if min(h, w) < cfg.min_side:
        flags.append(QualityFlag("tiny", f"The image is too small ({w} x {h} px); at least {cfg.min_side} px on "
                                         "the short side is needed to see the lesion: retake it closer or send "
                                         "the original file."))
    image = np.ascontiguousarray(image)
    gray = _resize_short(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cfg.blur_side)
    mean, std = float(gray.mean()), float(gray.std())
    if std < cfg.blank_std:
        flags.append(QualityFlag("blank", "The image is blank or almost uniform: no lesion can be seen. "
                                          "Retake it."))
    if mean < cfg.dark_mean:
        flags.append(QualityFlag("too_dark", "The image is too dark or blank to assess: retake it with more "
                                             "light."))
    elif mean > cfg.bright_mean:
        flags.append(QualityFlag("too_bright", "The image is too bright (overexposed) to assess: retake it with "
                                               "less light."))
    if std < cfg.blank_std:
        return flags  # focus and colour mean nothing on a uniform image
    sharpness = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    if sharpness < cfg.blur_var:
        flags.append(QualityFlag("blurred", "The image is too blurred to assess: retake it in focus."))
    elif sharpness > cfg.noise_ratio * std * std:
        flags.append(QualityFlag("noise", "The image is mostly noise (grainy speckle, no clear picture of a "
                                          "lesion): retake it or send the original file."))
    thumb = _resize_short(image, 96)
    if float((thumb.max(axis=2).astype(np.int16) - thumb.min(axis=2)).mean()) < cfg.min_chroma:
        flags.append(QualityFlag("no_colour", "The image is black and white: the model needs a colour "
                                              "dermoscopic image to assess a lesion. Send the colour original."))
        return flags  # the colour checks below mean nothing without colour
    corrected = _cold_fraction(shades_of_gray(thumb), cfg.cold_sat)
    raw = _cold_fraction(thumb, cfg.raw_cold_sat)
    if corrected > cfg.cold_frac or raw > cfg.raw_cold_frac:
        flags.append(QualityFlag("not_skin", "This does not look like a dermoscopic image of skin: check that "
                                             "the right picture was chosen."))
    return flags


def _ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (inverse of the Ledoit-Wolf shrunk covariance) of ``(N, D)`` features."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf(assume_centered=False).fit(features)
    return lw.location_.astype(np.float64), lw.get_precision().astype(np.float64)


def _mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = np.asarray(features, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, precision, centred), 0.0))


@dataclass
class FeatureStats:
    """Training-split feature statistics for the out-of-distribution check.

    Attributes:
        mean: ``(D,)`` mean pooled backbone feature.
        precision: ``(D, D)`` inverse shrunk covariance.
        threshold: Mahalanobis distance above which an image is out of distribution.
        percentile: Percentile of held-out distances the threshold was set at.
        n: Number of images fitted on.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float = 99.0
    n: int = 0

    #: Key prefix of these tensors in a bundle's safetensors file.
    TENSOR_PREFIX = "ood_stats."

    @classmethod
    def fit(cls, features: Any, percentile: float = 99.0, seed: int = 0) -> FeatureStats:
        """Fit on ``(N, D)`` features of in-domain (training) images.

        With at least 20 images the threshold comes from cross-fitted distances (see the module
        docstring); with fewer, from in-sample distances.

        Raises:
            ValueError: With fewer than 4 images or a non-finite feature.
        """
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 4:
            raise ValueError(f"feature statistics need an (N >= 4, D) array, got shape {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError("features contain NaN or infinity")
        if feats.shape[0] >= 20:
            order = np.random.default_rng(seed).permutation(feats.shape[0])
            a, b = feats[order[: len(order) // 2]], feats[order[len(order) // 2 :]]
            held_out = np.concatenate([_mahalanobis(b, *_ledoit_wolf(a)), _mahalanobis(a, *_ledoit_wolf(b))])
        else:
            held_out = None
        mean, precision = _ledoit_wolf(feats)
        if held_out is None:
            held_out = _mahalanobis(feats, mean, precision)
        threshold = float(np.percentile(held_out, percentile))
        return cls(mean=mean, precision=precision, threshold=threshold, percentile=float(percentile),
                   n=int(feats.shape[0]))

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.mean.shape[0])

    def distance(self, features: Any) -> np.ndarray:
        """Mahalanobis distance of each row of ``(N, D)`` features."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {feats.shape}")
        return _mahalanobis(feats, self.mean, self.precision)

    def flag(self, distance: float) -> QualityFlag | None:
        """The ``out_of_distribution`` flag for a distance above the threshold, else None."""
        if not np.isfinite(distance) or distance > self.threshold:
            return QualityFlag("out_of_distribution", "The image is unlike the images the model was trained on, "
                                                      "so its result cannot be trusted: retake it as a "
                                                      "dermoscopic close-up of the lesion.")
        return None

    def summary(self) -> dict[str, Any]:
        """What the model card records (the tensors themselves live in the weights file)."""
        return {
            "method": "Mahalanobis distance of pooled backbone features, Ledoit-Wolf shrunk covariance",
            "threshold": self.threshold,
            "percentile": self.percentile,
            "n": self.n,
            "dim": self.dim,
            "tensors": [f"{self.TENSOR_PREFIX}mean", f"{self.TENSOR_PREFIX}precision"],
        }

    def tensors(self) -> dict[str, np.ndarray]:
        """``{name: float32 array}`` to store beside the weights."""
        return {f"{self.TENSOR_PREFIX}mean": self.mean.astype(np.float32),
                f"{self.TENSOR_PREFIX}precision": self.precision.astype(np.float32)}

    @classmethod
    def from_parts(cls, summary: dict[str, Any], tensors: dict[str, Any]) -> FeatureStats:
        """Rebuild from :meth:`summary` and :meth:`tensors` output.

        Raises:
            CheckpointError: When entries are missing or shapes disagree.
        """
        try:
            mean = np.asarray(tensors[f"{cls.TENSOR_PREFIX}mean"], dtype=np.float64)
            precision = np.asarray(tensors[f"{cls.TENSOR_PREFIX}precision"], dtype=np.float64)
            stats = cls(mean=mean, precision=precision, threshold=float(summary["threshold"]),
                        percentile=float(summary.get("percentile", 99.0)), n=int(summary.get("n", 0)))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"out-of-distribution statistics are incomplete or malformed: {err}") from None
        if mean.ndim != 1 or precision.shape != (mean.shape[0], mean.shape[0]):
            raise CheckpointError(f"out-of-distribution statistics have inconsistent shapes {mean.shape} and "
                                  f"{precision.shape}")
        return stats
