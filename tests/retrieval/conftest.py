"""Fixtures of the retrieval tests: varied synthetic lesions, a label CSV with twins, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.data.formats import load_table
from backend.data.schema import DIAGNOSES, MALIGNANT_DIAGNOSES
from backend.retrieval.build import build_library


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    yield


def varied_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A random-coloured background with a random-coloured blob: images a tiny untrained net tells apart."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.2, size * 0.8, 2)
    radius = rng.uniform(size * 0.1, size * 0.4)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    img = np.empty((size, size, 3), np.float64)
    img[...] = rng.integers(0, 256, 3)
    img[blob] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def twin_of(image: np.ndarray) -> np.ndarray:
    """Another shot of the same scene: the same colours and blob under fresh sensor noise.

    Nearly the same embedding, yet another photograph (its pixels differ by far more than a
    re-encoded copy's, so the similar-case search does not mistake it for the query itself).
    """
    noise = np.random.default_rng(int(image[0, 0, 0]) + 1).normal(0, 12, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def write_twin_dataset(root: Path, n_pairs: int = 8, size: int = 48, seed: int = 0) -> Path:
    """``2 * n_pairs`` PNGs where image ``2j+1`` is the twin of ``2j``, each its own lesion and patient.

    Diagnoses cycle through the eight codes, so both members of a pair usually differ in diagnosis.

    Returns:
        The path of ``labels.csv`` (images in ``root / "images"``).
    """
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["image,diagnosis,label,lesion_id,patient_id"]
    for j in range(n_pairs):
        base = varied_image(rng, size)
        for i, picture in ((2 * j, base), (2 * j + 1, twin_of(base))):
            Image.fromarray(picture).save(images / f"IMG_{i:03d}.png")
            diagnosis = DIAGNOSES[i % len(DIAGNOSES)]
            lines.append(f"IMG_{i:03d}.png,{diagnosis},{int(diagnosis in MALIGNANT_DIAGNOSES)},L{i},P{i}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def predictor():
    """An untrained tiny predictor (instant; identified by a hash of its weights)."""
    from tests.inference.tiny import tiny_predictor

    return tiny_predictor()


@pytest.fixture(scope="module")
def other_predictor():
    """Another tiny predictor with different weights (a different model)."""
    from tests.inference.tiny import tiny_net, tiny_predictor

    return tiny_predictor(tiny_net(seed=1))


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """``labels.csv`` of 8 twin pairs (see :func:`write_twin_dataset`)."""
    return write_twin_dataset(tmp_path_factory.mktemp("twins"))


@pytest.fixture(scope="module")
def twin_library(twins, predictor, tmp_path_factory):
    """The twin dataset built into a library with :func:`predictor`; ``(library folder, table)``."""

    table = load_table(twins, check_images=False)
    out = tmp_path_factory.mktemp("lib") / "twins"
    build_library(table, out, predictor, img_dir=twins.parent / "images", chunk_size=5, progress=False)
    return out, table


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    """The dashboard tests' two tiny trained bundles (built once per session, shared with tests/app)."""
    from tests.app.tiny_models import tiny_models_dir

    return tiny_models_dir(tmp_path_factory)
