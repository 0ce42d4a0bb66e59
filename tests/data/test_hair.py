"""DullRazor hair removal: thin dark lines are found and painted over, the rest is left alone."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.data.hair import check_hair_params, hair_mask, remove_hair, scaled_kernel_size
from backend.errors import ConfigError
from tests.conftest import make_lesion_image


def add_hair(image: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw three dark hairs (two crossing the lesion); returns the hairy image and the line mask."""
    size = image.shape[0]
    lines = [
        ((0, size * 0.2), (size, size * 0.7)),
        ((size * 0.3, 0), (size * 0.6, size)),
        ((0, size * 0.9), (size, size * 0.85)),
    ]
    hairy = Image.fromarray(image)
    mask = Image.new("L", hairy.size)
    for line in lines:
        ImageDraw.Draw(hairy).line(line, fill=(30, 20, 15), width=width)
        ImageDraw.Draw(mask).line(line, fill=255, width=width)
    return np.array(hairy), np.array(mask) > 0


def far_from(mask: np.ndarray, pixels: int = 3) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) == 0


@pytest.mark.parametrize(("size", "width"), [(64, 1), (64, 2), (256, 5)])
def test_remove_hair_restores_pixels_under_hairs_and_keeps_the_rest(rng, size, width):
    clean = make_lesion_image(rng, size)
    hairy, lines = add_hair(clean, width)
    before = hairy.copy()
    out = remove_hair(hairy)
    assert out.shape == clean.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(hairy, before)  # input untouched
    err_before = np.abs(hairy.astype(int) - clean)[lines].mean()
    err_after = np.abs(out.astype(int) - clean)[lines].mean()
    assert err_before > 80
    assert err_after < 0.25 * err_before
    far = far_from(lines)
    assert np.abs(out.astype(int) - clean)[far].mean() < 2.0


@pytest.mark.parametrize(("size", "width"), [(64, 1), (256, 5)])
def test_hair_mask_finds_the_lines_not_the_lesion(rng, size, width):
    clean = make_lesion_image(rng, size)
    hairy, lines = add_hair(clean, width)
    mask = hair_mask(hairy)
    assert mask.dtype == bool and mask.shape == lines.shape
    assert mask[lines].mean() > 0.9
    assert mask[far_from(lines)].mean() < 0.1
    assert hair_mask(clean).mean() < 0.1  # a hairless lesion is (almost) left alone


def test_kernel_scales_with_image_size_so_wide_hairs_are_found_at_high_resolution(rng):
    clean = make_lesion_image(rng, 256)
    hairy, lines = add_hair(clean, 5)
    # the scaled kernel (9 px at 256 px) sees 5-px hairs; a fixed 3-px kernel would not
    assert scaled_kernel_size(17, hairy.shape) == 9
    assert hair_mask(hairy)[lines].mean() > 0.9
    assert hair_mask(hairy, kernel_size=5)[lines].mean() < 0.5  # scaled down to the 3-px minimum


@pytest.mark.parametrize(("short", "expected"), [(512, 17), (256, 9), (64, 3), (16, 3), (1024, 35)])
def test_scaled_kernel_size_is_odd_and_proportional(short, expected):
    assert scaled_kernel_size(17, (short, short * 2, 3)) == expected
    assert scaled_kernel_size(17, (short * 2, short, 3)) == expected


def test_remove_hair_without_hair_changes_little(rng):
    clean = make_lesion_image(rng, 64)
    assert np.abs(remove_hair(clean).astype(int) - clean).mean() < 1.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 16}, "kernel_size must be an odd integer >= 3, got 16"),
        ({"kernel_size": 1}, "kernel_size must be an odd integer >= 3, got 1"),
        ({"kernel_size": 17.0}, "kernel_size must be an integer"),
        ({"kernel_size": True}, "kernel_size must be an integer"),
        ({"threshold": -1}, "threshold must be in [0, 254]"),
        ({"threshold": 255}, "threshold must be in [0, 254]"),
        ({"inpaint_radius": 0}, "inpaint_radius must be >= 1"),
    ],
)
def test_bad_parameters_are_config_errors(rng, kwargs, message):
    image = make_lesion_image(rng, 32)
    with pytest.raises(ConfigError) as info:
        remove_hair(image, **kwargs)
    assert message in str(info.value)
    with pytest.raises(ConfigError):
        check_hair_params(**kwargs)


@pytest.mark.parametrize(
    "image",
    [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3), np.float32),
     np.zeros((0, 32, 3), np.uint8), [[0, 0, 0]]],
)
def test_bad_images_are_rejected_clearly(image):
    with pytest.raises(ConfigError, match="hair removal needs"):
        hair_mask(image)
    with pytest.raises(ConfigError, match="hair removal needs"):
        remove_hair(image)
