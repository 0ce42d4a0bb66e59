"""Predictor on a few real dermoscopic images (skipped with a reason where ../shared/data is absent)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from backend.inference.quality import image_flags
from tests.inference.tiny import tiny_net, tiny_predictor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_images(request):
    data = request.getfixturevalue("shared_data")
    with open(data / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked, datasets = [], set()
    for row in rows:  # three images from three different sources
        path = data / "images" / row["image"]
        if row["dataset"] not in datasets and path.is_file():
            datasets.add(row["dataset"])
            picked.append(path)
        if len(picked) == 3:
            break
    assert len(picked) == 3
    return picked


def test_predictor_on_three_real_images(real_images):
    predictor = tiny_predictor(tiny_net())
    predictor.fit_ood(real_images * 2)  # tiny OOD statistics so the distance path runs on real features
    results = predictor.predict(real_images, metadata=[{"age_approx": 60}, None, {"sex": "female"}], tta=True)
    assert [r.image for r in results] == [str(p) for p in real_images]
    for result, path in zip(results, real_images, strict=True):
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 <= result.risk <= 1.0 and result.traffic_light in ("green", "yellow", "red")
        assert result.thickness_mm >= 0 and result.thickness_band
        assert result.ood_distance is not None
        _, image = predictor.load(path)
        assert min(image.shape[:2]) >= predictor.img_size  # reduced decode never goes below the input size
        assert image_flags(image) == []  # real dermoscopy passes the image-statistics checks
        heat = predictor.explain(path, target="MEL")
        assert heat.shape == image.shape[:2] and 0.0 <= heat.min() <= heat.max() <= 1.0
        assert predictor.overlay(image, heat, 0.4).shape == image.shape
    assert np.isfinite([r.malignant for r in results]).all()


def test_real_uploads_decode_once_and_workers_agree(real_images):
    predictor = tiny_predictor(tiny_net())
    prepared = [predictor.prepare((p.name, p.read_bytes())) for p in real_images]
    results = predictor.predict(prepared)
    heat = predictor.explain(prepared[0], target=results[0].top_class)
    assert heat.shape == prepared[0].image.shape[:2]
    [batch] = list(predictor.iter_outputs(real_images, names=[p.name for p in real_images], num_workers=2))
    assert batch.failures == [] and [r.image for r in batch.predictions] == [r.image for r in results]
    np.testing.assert_allclose(batch.raw.probs, [[r.probabilities[c] for c in r.probabilities] for r in results],
                               atol=1e-6)
