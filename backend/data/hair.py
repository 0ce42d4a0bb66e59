"""DullRazor-style hair removal: find thin dark hairs with a black-hat filter and inpaint over them.

Hairs crossing a lesion hide its pigment network and borders and are a known shortcut for
classifiers. DullRazor (Lee et al., 1997) removes them cheaply: a morphological closing fills in
dark structures thinner than the structuring element, so ``closing - image`` (the black-hat) is
large exactly on thin dark lines; thresholding that gives a hair mask, and inpainting replaces the
masked pixels from their surroundings.

``kernel_size`` is given for a :data:`REFERENCE_SIDE`-px short side and scaled with the image, because
hair width in pixels scales with resolution: the same settings work on a 224-px network input and a
1024-px original. OpenCV is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import numpy as np

from backend.errors import ConfigError

#: Short side, in pixels, at which ``kernel_size`` is used as given (scaled proportionally otherwise).
REFERENCE_SIDE: int = 512
#: Smallest structuring element used after scaling (3 px still catches 1-2 px wide hairs).
MIN_KERNEL: int = 3


def check_hair_params(kernel_size: int = 17, threshold: int = 10, inpaint_radius: int = 3) -> None:
    """Reject hair-removal settings that would silently do nothing or fail inside OpenCV.

    Args:
        kernel_size: Odd structuring-element side >= 3, in pixels at :data:`REFERENCE_SIDE`.
        threshold: Black-hat response (0-254 grey levels) above which a pixel counts as hair.
        inpaint_radius: Inpainting neighbourhood radius in pixels, >= 1.

    Raises:
        ConfigError: A value is of the wrong type or out of range; the message names it.
    """
    for name, value in (("kernel_size", kernel_size), ("threshold", threshold), ("inpaint_radius", inpaint_radius)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"hair removal: {name} must be an integer, got {value!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ConfigError(f"hair removal: kernel_size must be an odd integer >= 3, got {kernel_size}")
    if not 0 <= threshold <= 254:
        raise ConfigError(f"hair removal: threshold must be in [0, 254] grey levels, got {threshold}")
    if inpaint_radius < 1:
        raise ConfigError(f"hair removal: inpaint_radius must be >= 1 pixel, got {inpaint_radius}")


def scaled_kernel_size(kernel_size: int, image_shape: tuple[int, ...]) -> int:
    """The odd kernel side actually used for an image of ``image_shape`` (see the module docstring)."""
    short = min(image_shape[0], image_shape[1])
    side = round(kernel_size * short / REFERENCE_SIDE)
    side = max(MIN_KERNEL, side)
    return side if side % 2 == 1 else side + 1


def hair_mask(image: np.ndarray, kernel_size: int = 17, threshold: int = 10) -> np.ndarray:
    """Find thin dark hairs.

    Args:
        image: HxWx3 uint8 RGB image.
        kernel_size: Odd cross-shaped structuring-element side at :data:`REFERENCE_SIDE`; hairs
            thinner than (about) the scaled side are found, wider dark areas (the lesion) are not.
        threshold: Minimum black-hat response, in grey levels, of a hair pixel.

    Returns:
        HxW bool array, True on hair pixels.

    Raises:
        ConfigError: Bad image shape/dtype or bad parameters.
    """
    import cv2

    _check_image(image)
    check_hair_params(kernel_size, threshold)
    side = scaled_kernel_size(kernel_size, image.shape)
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (side, side))
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel)
    return blackhat > threshold


def remove_hair(image: np.ndarray, kernel_size: int = 17, threshold: int = 10, inpaint_radius: int = 3) -> np.ndarray:
    """Remove thin dark hairs by inpainting (Telea) over :func:`hair_mask`.

    Args:
        image: HxWx3 uint8 RGB image (not modified).
        kernel_size: See :func:`hair_mask`.
        threshold: See :func:`hair_mask`.
        inpaint_radius: Neighbourhood radius, in pixels, each inpainted pixel is filled from.

    Returns:
        A new HxWx3 uint8 RGB array; a copy of ``image`` when no hair is found.

    Raises:
        ConfigError: Bad image shape/dtype or bad parameters.
    """
    import cv2

    check_hair_params(kernel_size, threshold, inpaint_radius)
    mask = hair_mask(image, kernel_size, threshold)
    if not mask.any():
        return np.ascontiguousarray(image).copy()
    # Inpainting is channel-order agnostic, so RGB in gives RGB out.
    out = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8) * 255, inpaint_radius, cv2.INPAINT_TELEA)
    return np.ascontiguousarray(out, dtype=np.uint8)


def _check_image(image: np.ndarray) -> None:
    """Accept only what the rest of the pipeline produces: a non-empty HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ConfigError(f"hair removal needs an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ConfigError(f"hair removal needs a non-empty image, got shape {image.shape}")
