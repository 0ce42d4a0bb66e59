"""Synthetic dermoscopy-like photos for the follow-up tests: textured skin with a dark lesion of known area."""

from __future__ import annotations

import io

import numpy as np
import pytest

SKIN = np.array([214.0, 168.0, 148.0])
LESION = np.array([105.0, 68.0, 52.0])


def lesion_photo(seed: int = 0, size: int = 160, radius: float | None = None, centre: tuple[float, float] | None = None,
                 lobes: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured photo with fine and coarse skin texture and a dark lesion, and the lesion's true mask.

    Args:
        seed: Seed of the texture (two seeds give two unrelated photos).
        size: Side in pixels.
        radius: Lesion radius (default 18% of the side).
        centre: Lesion centre ``(x, y)`` (default near the middle).
        lobes: Amplitude of a 5-lobed border (0 = a disc).
    """
    import cv2

    rng = np.random.default_rng(seed)
    radius = size * 0.18 if radius is None else radius
    cx, cy = centre if centre is not None else (size * 0.5 + rng.uniform(-4, 4), size * 0.5 + rng.uniform(-4, 4))
    fine = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    coarse = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 5)
    texture = 10 * fine / fine.std() + 8 * coarse / coarse.std()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.arctan2(yy - cy, xx - cx)
    edge = radius * (1 + lobes * np.sin(5 * angle))
    alpha = np.clip((edge - np.hypot(xx - cx, yy - cy)) / 1.5 + 0.5, 0, 1)[..., None]
    skin = SKIN + texture[..., None] * np.array([1.0, 0.9, 0.8])
    image = skin * (1 - alpha) + (LESION + 0.5 * texture[..., None]) * alpha
    image += rng.normal(0, 2, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), alpha[..., 0] >= 0.5


@pytest.fixture
def photo() -> tuple[np.ndarray, np.ndarray]:
    """A 160-px lesion photo and its true mask."""
    return lesion_photo(0)


def png_file(path, image: np.ndarray, exif: bool = False):
    """Write ``image`` as PNG (with a camera make and GPS block in EXIF when ``exif``) and return the path."""
    from PIL import Image

    picture = Image.fromarray(image)
    if exif:
        data = Image.Exif()
        data[0x010F] = "SecretCamMaker"
        data[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}
        picture.save(path, format="PNG", exif=data)
    else:
        picture.save(path, format="PNG")
    return path


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """``image`` encoded in memory."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


# The dashboard tests' tiny model bundles (built once per session) for the CLI and the Follow-up screen.
from tests.app.conftest import app_env, tiny_models  # noqa: E402, F401
