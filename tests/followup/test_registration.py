"""Registration: known camera motion is recovered within 2 px, growth is not taken for zoom, unrelated pairs fail."""

from __future__ import annotations

import numpy as np
import pytest

from backend.followup.registration import RegistrationConfig, apply, register_visits
from backend.followup.synthetic import FollowUpParams, make_follow_up
from tests.followup.conftest import lesion_photo


def grid_error(estimated: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean distance of a 5x5 grid over the lesion's box mapped baseline -> follow-up (truth) -> baseline."""
    ys, xs = np.nonzero(mask)
    gx, gy = np.meshgrid(np.linspace(xs.min(), xs.max(), 5), np.linspace(ys.min(), ys.max(), 5))
    grid = np.stack([gx, gy], -1).reshape(-1, 2)
    return float(np.linalg.norm(apply(estimated, apply(truth, grid)) - grid, axis=1).mean())


@pytest.mark.parametrize(("angle", "zoom", "shift"), [(25.0, 1.0, (0.05, -0.04)), (-12.0, 1.22, (0.0, 0.03)),
                                                      (8.0, 0.82, (-0.06, 0.0))])
def test_recovers_rotation_shift_and_zoom_within_two_pixels(angle, zoom, shift):
    before, truth = lesion_photo(1, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=angle, zoom=zoom, shift=shift), truth, seed=1)
    reg = register_visits(before, synthetic.image, truth, None)
    assert reg.aligned, reg.reason
    assert grid_error(reg.matrix, synthetic.matrix, truth) <= 2.0
    assert reg.scale == pytest.approx(1 / zoom, rel=0.02)
    assert reg.rotation_deg == pytest.approx(-angle, abs=1.0)
    assert reg.inliers >= 6 and not reg.used_lesion


def test_lesion_growth_is_not_taken_for_zoom():
    before, truth = lesion_photo(2, size=160, radius=34)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=10, growth=1.4), truth, seed=2)
    grown = synthetic.after_mask  # the follow-up's lesion (no zoom or shift here, only a small rotation)
    reg = register_visits(before, synthetic.image, truth, grown)
    assert reg.aligned and not reg.used_lesion
    assert reg.scale == pytest.approx(1.0, abs=0.02)  # the 40% wider lesion did not pull the fit
    assert grid_error(reg.matrix, synthetic.matrix, truth) <= 2.0


def test_matrix_is_in_the_photos_own_pixels_at_any_working_resolution():
    before, truth = lesion_photo(3, size=240)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=-20, zoom=1.1, shift=(0.03, 0.02)), truth, seed=3)
    reg = register_visits(before, synthetic.image, truth, None, RegistrationConfig(work_side=160))
    assert reg.aligned, reg.reason
    assert grid_error(reg.matrix, synthetic.matrix, truth) <= 2.0  # measured in 240-px pixels


@pytest.mark.parametrize("baseline_side", [300, 160])
def test_a_small_baseline_is_not_taken_for_a_zoom(baseline_side):
    """Below the working side a photo is not upsampled: its smaller size must not read as a camera zoom."""
    import cv2

    before, truth = lesion_photo(4, size=240)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=6, zoom=1.25), truth, seed=4)
    after = cv2.resize(synthetic.image, (700, 700), interpolation=cv2.INTER_CUBIC)  # a finer camera
    small = cv2.resize(before, (baseline_side, baseline_side), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(truth.astype(np.uint8), (baseline_side, baseline_side), interpolation=cv2.INTER_NEAREST) > 0
    reg = register_visits(small, after, mask, None)
    assert reg.aligned, reg.reason
    assert reg.scale == pytest.approx(1 / 1.25, rel=0.03)  # the camera's zoom, not 300/512 of it


def test_unrelated_photos_are_not_aligned():
    first, _ = lesion_photo(10, size=160)
    second, _ = lesion_photo(11, size=160)
    reg = register_visits(first, second)
    assert not reg.aligned and reg.matrix is None
    assert reg.reason.startswith("could not align")
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    reg = register_visits(*noise)
    assert not reg.aligned and reg.matrix is None and "could not align" in reg.reason
    assert reg.to_dict()["aligned"] is False
