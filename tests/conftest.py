"""Shared fixtures: the real development data (when present) and tiny synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dermoscopy data folder; skips the test with a reason when it is absent."""
    if not (SHARED_DATA / "labels.csv").is_file() or not (SHARED_DATA / "images").is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (labels.csv + images/): it sits beside the repo "
            "only on development and CI machines"
        )
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator so synthetic data is the same in every run."""
    return np.random.default_rng(0)


def make_lesion_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A skin-coloured square with a darker blob: a tiny stand-in for a dermoscopic image."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    radius = rng.uniform(size * 0.15, size * 0.3)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    img = np.empty((size, size, 3), np.uint8)
    img[...] = (np.array([220, 170, 150]) + rng.normal(0, 6, (size, size, 3))).clip(0, 255)
    img[blob] = (np.array([110, 70, 50]) + rng.normal(0, 6, (int(blob.sum()), 3))).clip(0, 255)
    return img
