"""Lesion segmentation: area, diameter, border and colour of synthetic lesions; no lesion is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from backend.errors import FollowUpError
from backend.followup.segmentation import segment_lesion, valid_pixels
from backend.followup.threshold import minimum_error_threshold, otsu_threshold
from tests.conftest import make_lesion_image
from tests.followup.conftest import LESION, lesion_photo


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dark_blob_area_within_three_percent(seed):
    image, truth = lesion_photo(seed, size=128)
    seg = segment_lesion(image, "blob.png")
    assert abs(seg.area_px / truth.sum() - 1) <= 0.03
    assert (seg.mask & truth).sum() / (seg.mask | truth).sum() >= 0.95
    assert not seg.touches_border


def test_tiny_project_lesion_image_is_found():
    rng = np.random.default_rng(3)
    image = make_lesion_image(rng, 64)
    seg = segment_lesion(image, "tiny.png")
    dark = image.mean(axis=2) < 120  # the blob of make_lesion_image is ~(110, 70, 50) on ~(220, 170, 150) skin
    assert abs(seg.area_px / dark.sum() - 1) <= 0.06


def test_disc_measures_and_lobed_border():
    disc, truth = lesion_photo(4, size=160, radius=30)
    seg = segment_lesion(disc)
    assert seg.diameter_px == pytest.approx(60, rel=0.04)
    assert seg.irregularity < 0.03
    assert seg.centroid[0] == pytest.approx(np.nonzero(truth)[1].mean(), abs=1.0)
    assert np.allclose(seg.mean_rgb, LESION, atol=12)  # mean colour inside the lesion, as photographed
    lobed = segment_lesion(lesion_photo(4, size=160, radius=30, lobes=0.25)[0])
    assert lobed.irregularity > seg.irregularity + 0.05
    assert seg.to_dict()["area_px"] == seg.area_px


def test_plain_skin_is_an_error_naming_the_image():
    rng = np.random.default_rng(0)
    skin = np.clip(np.array([214, 168, 148]) + rng.normal(0, 3, (96, 96, 3)), 0, 255).astype(np.uint8)
    with pytest.raises(FollowUpError, match=r"^plain\.png: no lesion found"):
        segment_lesion(skin, "plain.png")
    with pytest.raises(FollowUpError, match="black.png"):
        segment_lesion(np.zeros((64, 64, 3), np.uint8), "black.png")


def test_black_dermatoscope_frame_is_not_lesion():
    image, truth = lesion_photo(5, size=128)
    framed = image.copy()
    framed[:, :10] = 3  # black frame on the left and a black band at the bottom, touching the edge
    framed[-8:] = 5
    assert not valid_pixels(framed)[:, :10].any()
    seg = segment_lesion(framed, "framed.png")
    assert not seg.mask[:, :10].any() and not seg.mask[-8:].any()
    assert abs(seg.area_px / truth.sum() - 1) <= 0.03


def test_thresholds_of_a_single_value_do_not_fail():
    constant = np.full(500, 128, np.float32)
    threshold, share = otsu_threshold(constant)
    assert threshold == pytest.approx(128, abs=1e-2) and share == 0.0
    assert minimum_error_threshold(constant, 128, 128) is None
