"""Pictures: blend and swipe are exact at their ends, comparison pictures need an aligned pair, PNGs carry no EXIF."""

from __future__ import annotations

import io

import numpy as np
import pytest

from backend.errors import FollowUpError
from backend.followup import compare_visits
from backend.followup.render import blend, change_map_image, comparison_image, png_bytes, swipe
from backend.followup.synthetic import FollowUpParams, make_follow_up
from tests.followup.conftest import lesion_photo


def test_blend_and_swipe():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.full((10, 20, 3), 200, np.uint8)
    assert np.array_equal(blend(a, b, 0.0), a) and np.array_equal(blend(a, b, 1.0), b)
    assert np.all(blend(a, b, 0.25) == 50)
    half = swipe(a, b, 0.5)
    assert np.all(half[:, :9] == 0) and np.all(half[:, 11:] == 200) and np.all(half[:, 9:11] == 255)
    assert np.array_equal(swipe(a, b, 0.0), b) and np.array_equal(swipe(a, b, 1.0), a)


def test_pictures_of_an_aligned_pair_and_none_for_an_unaligned_one():
    from PIL import Image

    before, truth = lesion_photo(14, size=128)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=12, growth=1.3), truth, seed=14)
    result = compare_visits(before, synthetic.image)
    side = comparison_image(result)
    assert side.shape[1] > 2 * before.shape[1] and side.dtype == np.uint8
    changes = change_map_image(result)
    grown = result.after_mask & ~result.before_mask
    left = changes[-before.shape[0]:, : before.shape[1]]
    assert np.median(left[grown][:, 0]) > np.median(left[grown][:, 2]) + 60  # grown region tinted red
    picture = Image.open(io.BytesIO(png_bytes(side)))
    assert picture.format == "PNG" and not picture.getexif() and "exif" not in picture.info
    unrelated = compare_visits(before, lesion_photo(15, size=128)[0])
    with pytest.raises(FollowUpError, match="could not align"):
        comparison_image(unrelated)
    with pytest.raises(FollowUpError):
        change_map_image(unrelated)
