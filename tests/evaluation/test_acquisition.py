"""Acquisition variants of the test split: squashed and dermoscope-bordered images, scored like the plain ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backend.data.config import DataConfig
from backend.data.images import ImageLoadError
from backend.data.transforms import preprocessing_dict
from backend.errors import ConfigError
from backend.evaluation.acquisition import PerturbedImages, squash_to_square, with_dermoscope_border
from backend.evaluation.split_eval import predict_rows
from backend.inference.predictor import Predictor
from tests.conftest import make_lesion_image
from tests.inference.tiny import tiny_net


def test_squash_ignores_the_aspect_ratio():
    image = np.zeros((30, 60, 3), np.uint8)
    image[:, :30] = 255  # left half white
    out = squash_to_square(image, side=40)
    assert out.shape == (40, 40, 3)
    assert out[:, :18].min() == 255 and out[:, 22:].max() == 0  # still half and half: squashed, not cropped


def test_border_blacks_out_the_corners_only():
    image = np.full((40, 60, 3), 200, np.uint8)
    out = with_dermoscope_border(image)
    assert out[0, 0].max() == 0 and out[-1, -1].max() == 0
    assert (out[20, 30] == 200).all() and (out[20, 5] == 200).all()
    assert (image == 200).all()  # the input is left untouched


def test_perturbed_images_decode_lazily_and_name_bad_files(tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(make_lesion_image(np.random.default_rng(0), 48)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    images = PerturbedImages([good, bad], lambda im: squash_to_square(im, 32))
    assert len(images) == 2 and images[0].shape == (32, 32, 3)
    with pytest.raises(ImageLoadError, match="b.jpg"):
        images[1]


def test_predict_rows_scores_each_variant_and_rejects_unknown_ones(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(make_lesion_image(rng, 48)).save(path)
        paths.append(str(path))
    rows = pd.DataFrame({"image": paths, "age_approx": [50.0] * 3, "sex": ["male"] * 3,
                         "anatom_site_general": ["back"] * 3})
    pre = preprocessing_dict(DataConfig(img_size=64))
    predictor = Predictor(tiny_net(use_metadata=False), pre, {"mean": 0.0, "std": 1.0})
    plain = predict_rows(predictor, rows)
    bordered = predict_rows(predictor, rows, variant="bordered")
    assert len(plain.rows) == len(bordered.rows) == 3
    assert not np.allclose(plain.raw.probs, bordered.raw.probs)
    with pytest.raises(ConfigError, match="rotated"):
        predict_rows(predictor, rows, variant="rotated")
