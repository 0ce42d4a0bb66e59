"""Image transforms (albumentations): one eval transform shared by training and inference.

* :func:`build_eval_transform` is the only preprocessing a model ever sees at validation, test and
  inference time. It is rebuilt from :func:`preprocessing_dict`, a plain-data description stored
  in every checkpoint and bundle, so inference can never drift from training.
* :func:`build_train_transform` adds augmentations suited to dermoscopy: lesions have no canonical
  orientation (flips and 90° rotations), sizes, aspect and framing vary (random resized crop of
  another aspect ratio, squashed to a square as many challenge images arrive; small affine;
  down-then-up scaling), and dermoscopes differ in colour, contrast, vignetting and the black
  circular frame of their field of view (colour jitter, vignette, :class:`RandomDermoscopeBorder`).
* :func:`build_byol_transforms` gives BYOL's two asymmetric strong views (Grill et al. 2020: view 1
  always blurred and never solarized, view 2 rarely blurred and sometimes solarized).

Colour constancy (Shades of Gray, Finlayson & Trezzi 2004) runs first in every pipeline when
enabled, so images from different dermoscopes share a white balance in training and inference.
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from backend.data.schema import IMAGENET_MEAN, IMAGENET_STD
from backend.errors import ConfigError

PREPROCESSING_VERSION = 1
#: Keys of :func:`preprocessing_dict`; a stored description must have exactly these.
PREPROCESSING_KEYS = frozenset(
    {"version", "img_size", "mean", "std", "color_constancy", "color_constancy_power", "hair_removal"}
)


def shades_of_gray(image: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Shades-of-Gray colour constancy: divide each channel by its Minkowski-``power`` mean.

    The illuminant is estimated as ``(mean(I_c ** p)) ** (1/p)`` per channel and normalised so the
    image keeps its overall brightness; ``p=1`` is Gray World, ``p=inf`` is max-RGB. Both steps run
    on 256-entry tables (a per-channel histogram for the mean, a lookup table for the gains), so the
    cost is that of two passes over uint8 data, not of a float power per pixel.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        power: Minkowski norm order (6 is the usual choice for dermoscopy).

    Returns:
        The corrected ``(H, W, 3)`` uint8 image.
    """
    levels = np.arange(256, dtype=np.float64)
    powered = levels**power
    pixels = image.reshape(-1, 3)
    illum = np.empty(3)
    for c in range(3):
        hist = np.bincount(pixels[:, c], minlength=256)
        illum[c] = (hist @ powered / max(pixels.shape[0], 1)) ** (1.0 / power)
    norm = float(np.sqrt(np.sum(illum**2)))
    if norm <= 1e-6:  # an all-black image has no illuminant to remove
        return image.copy()
    gains = np.sqrt(3.0) * (illum / norm)
    gains = np.where(gains > 1e-6, gains, 1.0)
    table = np.clip(levels[None, :] / gains[:, None], 0, 255).astype(np.uint8)  # (3, 256)
    out = np.empty_like(image)
    for c in range(3):
        out[..., c] = cv2.LUT(np.ascontiguousarray(image[..., c]), table[c])
    return out


class ShadesOfGray(A.ImageOnlyTransform):
    """Albumentations wrapper of :func:`shades_of_gray` (deterministic, ``p=1`` by default)."""

    def __init__(self, power: float = 6.0, p: float = 1.0) -> None:
        super().__init__(p=p)
        if power < 1:
            raise ConfigError(f"Shades of Gray power must be >= 1, got {power}")
        self.power = power

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        """Correct one image."""
        return shades_of_gray(img, self.power)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations serialises."""
        return ("power",)


class RandomVignette(A.ImageOnlyTransform):
    """Darken the image towards its corners, as dermoscopes with a round field of view do.

    Args:
        strength: Range of the darkening at the corners (0 = none, 1 = black corners).
        p: Probability of applying.
    """

    def __init__(self, strength: tuple[float, float] = (0.2, 0.7), p: float = 0.3) -> None:
        super().__init__(p=p)
        lo, hi = strength
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"vignette strength must satisfy 0 <= lo <= hi <= 1, got {strength}")
        self.strength = (float(lo), float(hi))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the strength and the centre offset once per image."""
        return {
            "amount": self.py_random.uniform(*self.strength),
            "cx": self.py_random.uniform(-0.1, 0.1),
            "cy": self.py_random.uniform(-0.1, 0.1),
        }

    def apply(
        self, img: np.ndarray, amount: float = 0.5, cx: float = 0.0, cy: float = 0.0, **params: Any
    ) -> np.ndarray:
        """Multiply by a radial fall-off reaching ``1 - amount`` at the corners."""
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ry = (yy / max(h - 1, 1) - 0.5 - cy) * 2
        rx = (xx / max(w - 1, 1) - 0.5 - cx) * 2
        radius = np.sqrt(rx**2 + ry**2) / np.sqrt(2.0)
        mask = 1.0 - amount * np.clip(radius, 0, 1) ** 2
        return np.clip(img.astype(np.float32) * mask[..., None], 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations serialises."""
        return ("strength",)


def circular_border(image: np.ndarray, radius: float = 0.75, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    """Black out everything outside a circle, as a contact dermoscope's round field of view does.

    Args:
        image: ``(H, W, 3)`` uint8.
        radius: Circle radius as a fraction of half the image diagonal (1 keeps the corners,
            about 0.71 touches the sides of a square image).
        cx: Centre offset as a fraction of the width.
        cy: Centre offset as a fraction of the height.
    """
    h, w = image.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    centre_x, centre_y = (w - 1) / 2 + cx * w, (h - 1) / 2 + cy * h
    r = radius * 0.5 * float(np.hypot(h, w))
    outside = (xx - centre_x) ** 2 + (yy - centre_y) ** 2 > r * r
    out = image.copy()
    out[outside] = 0
    return out


class RandomDermoscopeBorder(A.ImageOnlyTransform):
    """Add the black circular frame some dermoscopes leave (:func:`circular_border`) at a random radius.

    Args:
        radius: Range of the circle radius (fraction of half the diagonal).
        p: Probability of applying.
    """

    def __init__(self, radius: tuple[float, float] = (0.6, 0.95), p: float = 0.2) -> None:
        super().__init__(p=p)
        lo, hi = radius
        if not 0 < lo <= hi <= 1.5:
            raise ConfigError(f"dermoscope border radius must satisfy 0 < lo <= hi <= 1.5, got {radius}")
        self.radius = (float(lo), float(hi))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the radius and a small centre offset once per image."""
        return {
            "radius": self.py_random.uniform(*self.radius),
            "cx": self.py_random.uniform(-0.05, 0.05),
            "cy": self.py_random.uniform(-0.05, 0.05),
        }

    def apply(
        self, img: np.ndarray, radius: float = 0.8, cx: float = 0.0, cy: float = 0.0, **params: Any
    ) -> np.ndarray:
        """Black out the outside of the circle."""
        return circular_border(img, radius, cx, cy)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations serialises."""
        return ("radius",)


def preprocessing_dict(data_cfg: Any) -> dict[str, Any]:
    """The plain-data description of the eval preprocessing, stored with every model.

    Args:
        data_cfg: A :class:`backend.data.config.DataConfig`; its ``mean``/``std`` when set (training
            sets them from the backbone), else ImageNet's.
    """
    return {
        "version": PREPROCESSING_VERSION,
        "img_size": int(data_cfg.img_size),
        "mean": [float(v) for v in (data_cfg.mean or IMAGENET_MEAN)],
        "std": [float(v) for v in (data_cfg.std or IMAGENET_STD)],
        "color_constancy": bool(data_cfg.color_constancy),
        "color_constancy_power": 6.0,
        "hair_removal": bool(data_cfg.hair_removal),
    }


def check_preprocessing(pre: dict[str, Any]) -> dict[str, Any]:
    """Validate a stored preprocessing description (from a checkpoint or bundle).

    Raises:
        ConfigError: Naming missing or unknown keys, a version this code does not know, or the
            key whose value makes no transform (mean/std not 3 finite numbers, std <= 0, a flag
            that is not true/false, a colour-constancy power below 1).
    """
    if not isinstance(pre, dict):
        raise ConfigError(f"preprocessing must be a mapping, got {type(pre).__name__}")
    missing, unknown = PREPROCESSING_KEYS - set(pre), set(pre) - PREPROCESSING_KEYS
    if missing or unknown:
        raise ConfigError(
            f"preprocessing description: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
        )
    if pre["version"] != PREPROCESSING_VERSION:
        raise ConfigError(
            f"preprocessing version {pre['version']} is not supported (this code: {PREPROCESSING_VERSION})"
        )
    size = pre["img_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ConfigError(f"preprocessing img_size must be a whole number >= 16, got {size!r}")
    for key in ("mean", "std"):
        values = pre[key]
        if (not isinstance(values, list | tuple) or len(values) != 3
                or not all(_is_real(v) and math.isfinite(v) for v in values)):
            raise ConfigError(f"preprocessing {key} must be 3 finite numbers (R, G, B), got {values!r}")
    if not all(v > 0 for v in pre["std"]):
        raise ConfigError(f"preprocessing std must be > 0 for every channel, got {pre['std']!r}")
    for key in ("color_constancy", "hair_removal"):
        if not isinstance(pre[key], bool):
            raise ConfigError(f"preprocessing {key} must be true or false, got {pre[key]!r}")
    power = pre["color_constancy_power"]
    if not (_is_real(power) and math.isfinite(power) and power >= 1):
        raise ConfigError(f"preprocessing color_constancy_power must be a finite number >= 1, got {power!r}")
    return pre


def _is_real(value: Any) -> bool:
    """A plain int or float, not a bool (JSON ``true`` is no channel mean)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _prefix(pre: dict[str, Any]) -> list[Any]:
    return [ShadesOfGray(power=float(pre["color_constancy_power"]))] if pre["color_constancy"] else []


def _suffix(pre: dict[str, Any]) -> list[Any]:
    return [A.Normalize(mean=tuple(pre["mean"]), std=tuple(pre["std"]), max_pixel_value=255.0), ToTensorV2()]


def build_eval_transform(pre: dict[str, Any]) -> A.Compose:
    """Colour constancy, shorter side to ``img_size``, centre crop, normalise, to tensor.

    Args:
        pre: A :func:`preprocessing_dict` (from the config, a checkpoint or a bundle).
    """
    pre = check_preprocessing(pre)
    size = int(pre["img_size"])
    resize = [
        A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
        A.CenterCrop(height=size, width=size),
    ]
    return A.Compose([*_prefix(pre), *resize, *_suffix(pre)])


#: Augmentation strength presets: crop scale and aspect-ratio ranges (a crop of another aspect is
#: resized to a square, i.e. squashed, as challenge images often arrive), colour jitter, affine,
#: vignette, black dermoscope border and down-then-up scaling (images from lower-resolution devices).
_PRESETS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.7, 1.0), "ratio": (0.75, 1.333), "jitter": (0.1, 0.1, 0.1, 0.02), "jitter_p": 0.5,
              "affine_p": 0.0, "vignette_p": 0.0, "border_p": 0.0, "downscale_p": 0.0},
    "default": {"scale": (0.4, 1.0), "ratio": (0.6, 1.667), "jitter": (0.2, 0.2, 0.2, 0.05), "jitter_p": 0.8,
                "affine_p": 0.3, "vignette_p": 0.2, "border_p": 0.2, "downscale_p": 0.15},
    "strong": {"scale": (0.25, 1.0), "ratio": (0.5, 2.0), "jitter": (0.3, 0.3, 0.3, 0.08), "jitter_p": 0.9,
               "affine_p": 0.5, "vignette_p": 0.4, "border_p": 0.3, "downscale_p": 0.25},
}


def build_train_transform(data_cfg: Any) -> A.Compose:
    """Training augmentations for dermoscopy, ending exactly like the eval transform.

    Args:
        data_cfg: A :class:`backend.data.config.DataConfig` (``img_size``, ``augment`` preset,
            ``color_constancy``).
    """
    pre = preprocessing_dict(data_cfg)
    preset = _PRESETS[data_cfg.augment]
    size = pre["img_size"]
    b, c, s, h = preset["jitter"]
    augment = [
        A.RandomResizedCrop(size=(size, size), scale=preset["scale"], ratio=preset["ratio"]),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.Affine(scale=(0.9, 1.1), rotate=(-20, 20), translate_percent=(-0.05, 0.05), p=preset["affine_p"]),
        A.Downscale(scale_range=(0.5, 0.9), p=preset["downscale_p"]),
        A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=preset["jitter_p"]),
        RandomVignette(p=preset["vignette_p"]),
        RandomDermoscopeBorder(p=preset["border_p"]),
    ]
    return A.Compose([*_prefix(pre), *augment, *_suffix(pre)])


def _byol_view(pre: dict[str, Any], blur_p: float, solarize_p: float) -> A.Compose:
    size = pre["img_size"]
    blur_limit = (3, max(3, (size // 10) | 1))
    return A.Compose([
        *_prefix(pre),
        A.RandomResizedCrop(size=(size, size), scale=(0.2, 1.0), ratio=(0.75, 1.333)),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8),
        A.ToGray(p=0.2),
        A.GaussianBlur(blur_limit=blur_limit, sigma_limit=(0.1, 2.0), p=blur_p),
        A.Solarize(threshold_range=(0.5, 0.5), p=solarize_p),
        RandomVignette(p=0.2),
        *_suffix(pre),
    ])


def build_byol_transforms(data_cfg: Any) -> tuple[A.Compose, A.Compose]:
    """BYOL's two asymmetric strong views: (always blurred, never solarized), (rarely blurred, sometimes solarized)."""
    pre = preprocessing_dict(data_cfg)
    return _byol_view(pre, blur_p=1.0, solarize_p=0.0), _byol_view(pre, blur_p=0.1, solarize_p=0.2)
