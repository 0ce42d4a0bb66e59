"""Real images: synthetic follow-ups of known motion and growth are measured within the benchmark's tolerances."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from backend.data.images import load_image
from backend.followup import compare_visits, segment_lesion
from backend.followup.registration import apply, work_copy
from backend.followup.synthetic import FollowUpParams, make_follow_up

pytestmark = pytest.mark.integration

CASES = [  # rotation, zoom, shift, growth and lighting chosen before looking at the results
    FollowUpParams(angle_deg=20, zoom=1.15, shift=(0.03, -0.02), growth=1.0, brightness=1.1, colour=(1.05, 1, 0.95)),
    FollowUpParams(angle_deg=-25, zoom=0.85, shift=(-0.04, 0.02), growth=1.3, brightness=0.85),
    FollowUpParams(angle_deg=8, zoom=1.05, shift=(0.0, 0.05), growth=1.45, colour=(0.95, 1.0, 1.08)),
]


def test_synthetic_follow_ups_of_real_images(shared_data):
    with open(shared_data / "labels.csv", newline="", encoding="utf-8") as fh:
        names = sorted(row["image"] for row in csv.DictReader(fh))
    paths = [p for p in (shared_data / "images" / n for n in names[:10]) if p.is_file()][: len(CASES)]
    assert len(paths) == len(CASES)
    for i, (path, params) in enumerate(zip(paths, CASES, strict=True)):
        baseline, _ = work_copy(load_image(path), 256)
        truth = segment_lesion(baseline, path.name).mask
        synthetic = make_follow_up(baseline, params, truth, seed=i)
        result = compare_visits(baseline, synthetic.image, before_name=path.name)
        assert result.aligned, f"{path.name}: {result.reason}"
        ys, xs = np.nonzero(truth)
        grid = np.stack(np.meshgrid(np.linspace(xs.min(), xs.max(), 5), np.linspace(ys.min(), ys.max(), 5)),
                        -1).reshape(-1, 2)
        error = np.linalg.norm(apply(result.registration.matrix, apply(synthetic.matrix, grid)) - grid, axis=1).mean()
        assert error <= 2.0, f"{path.name}: registration error {error:.2f} px"
        assert abs(result.area_change - synthetic.true_area_change) <= 0.10, path.name
        if params.growth == 1.0:
            assert abs(result.area_change) <= 0.05, path.name
