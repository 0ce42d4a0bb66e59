"""The honest Grad-CAM picture: what the model saw, transparent low heat, no blue tint, a legend."""

from __future__ import annotations

import numpy as np
import pytest

from backend.errors import ConfigError
from backend.inference.explain import (
    CAM_TRANSPARENT_BELOW,
    UNSEEN_GREY,
    cam_colours,
    heatmap_to_image,
    legend_strip,
    overlay,
    seen_box,
    seen_mask,
)

PRE = {"img_size": 224}


def test_seen_mask_of_a_landscape_image_has_the_centre_crop_margins():
    mask = seen_mask((450, 600, 3), PRE)  # H=450, W=600: the crop is the central 450 x 450 square
    assert mask.shape == (450, 600) and mask.dtype == bool
    top, bottom, left, right = seen_box((450, 600), PRE)
    assert (top, bottom) == (0, 450)
    assert abs(left - 75) <= 1 and abs((600 - right) - 75) <= 1  # 75 px unseen on each side
    assert mask[:, left:right].all() and not mask[:, :left].any() and not mask[:, right:].any()
    assert abs(int(mask.sum()) - 450 * 450) <= 450 * 2


def test_seen_mask_portrait_square_and_size_as_int():
    top, bottom, left, right = seen_box((800, 400), 64)
    assert (left, right) == (0, 400) and abs(top - 200) <= 2 and abs((800 - bottom) - 200) <= 2
    assert seen_mask((300, 300), PRE).all()


def test_seen_mask_matches_where_the_heatmap_lands():
    heat = heatmap_to_image(np.ones((32, 32), np.float32), (90, 160, 3), 32)
    mask = seen_mask((90, 160), 32)
    assert heat[mask].mean() > 0.95 and heat[~mask].mean() < 0.05


def test_low_heat_is_transparent_and_colours_have_no_blue_tint():
    image = np.full((40, 40, 3), 150, np.uint8)
    heat = np.zeros((40, 40), np.float32)
    heat[:, 20:] = 1.0
    heat[:5, :5] = CAM_TRANSPARENT_BELOW  # at the threshold: still transparent
    out = overlay(image, heat, 1.0)
    np.testing.assert_array_equal(out[:, :20], image[:, :20])  # the skin stays visible
    assert (out[:, 20:, 0] > out[:, 20:, 2]).all()  # high heat is warm (red), not blue
    colours = cam_colours(np.linspace(0, 1, 11))
    assert (colours[:, 2] <= colours[:, 0]).all() and (colours[:, 0] > 200).all()


def test_unseen_area_is_greyed_and_the_seen_area_untouched():
    image = np.zeros((30, 60, 3), np.uint8)
    image[..., 1] = 200
    mask = seen_mask(image.shape, 16)
    out = overlay(image, np.zeros((30, 60), np.float32), 0.4, seen=mask)
    np.testing.assert_array_equal(out[mask], image[mask])
    assert (np.abs(out[~mask].astype(int) - UNSEEN_GREY) < np.abs(image[~mask].astype(int) - UNSEEN_GREY) + 1).all()
    assert out[~mask][:, 0].min() > 50  # red channel pulled up towards grey
    with pytest.raises(ConfigError, match="seen mask"):
        overlay(image, np.zeros((30, 60), np.float32), 0.4, seen=np.ones((5, 5), bool))


def test_legend_strip_runs_from_background_to_red():
    strip = legend_strip(100, 10)
    assert strip.shape == (10, 100, 3) and strip.dtype == np.uint8
    assert (strip[:, 0] == 235).all()  # low attention: transparent
    assert strip[0, -1, 0] > 200 and strip[0, -1, 1] < 40 and strip[0, -1, 2] < 40  # high: red
