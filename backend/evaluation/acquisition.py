"""Acquisition variants of a test split: the same images as another clinic's pipeline might deliver them.

External test images arrive squashed to a square (ISIC challenge sets resized to 224x224 whatever
their aspect) or framed by a dermoscope's black circular field of view. Scoring the test split also
through these deterministic variants shows whether a model's figures survive them (the card reports
each beside the plain split). Every variant is a pure function of a decoded ``(H, W, 3)`` uint8 image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from backend.data.images import load_image
from backend.data.transforms import circular_border

#: Side of the square the "squashed" variant resizes to (the ISIC challenge test images' 224x224).
SQUASH_SIDE = 224
#: Radius of the "bordered" variant's circle, as a fraction of half the image diagonal (black corners).
BORDER_RADIUS = 0.75


def squash_to_square(image: np.ndarray, side: int = SQUASH_SIDE) -> np.ndarray:
    """Resize to ``side x side`` ignoring the aspect ratio, as challenge test sets were published."""
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def with_dermoscope_border(image: np.ndarray, radius: float = BORDER_RADIUS) -> np.ndarray:
    """Black out the outside of a centred circle, as a contact dermoscope's field of view does."""
    return circular_border(image, radius)


#: Name -> perturbation of the decoded image; ``plain`` is the split as it is.
VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "plain": None,
    "squashed": squash_to_square,
    "bordered": with_dermoscope_border,
}
#: What each variant is, in the card's words.
DESCRIPTIONS: dict[str, str] = {
    "plain": "the test images as stored",
    "squashed": f"each test image resized to {SQUASH_SIDE}x{SQUASH_SIDE} ignoring its aspect ratio",
    "bordered": (
        f"each test image with a black circular dermoscope border (radius {BORDER_RADIUS} of half the diagonal)"
    ),
}


class PerturbedImages(Sequence):
    """Lazily decoded, perturbed images of a list of paths (what ``Predictor.raw_outputs`` takes).

    Items are decoded when read, i.e. in the predictor's DataLoader workers. Decoding errors
    surface then, as ``ImageLoadError`` naming the file, so the predictor skips and reports the
    image like any unreadable one.
    """

    def __init__(self, paths: Sequence[Any], perturb: Callable[[np.ndarray], np.ndarray]) -> None:
        self.paths = list(paths)
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self.perturb(load_image(self.paths[index]))
