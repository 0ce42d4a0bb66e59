"""Choosing the test side: candidate validation, and backbones that cannot predict at another side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from backend.data.config import DataConfig
from backend.data.metadata import MetadataEncoder
from backend.data.schema import DIAGNOSES
from backend.data.transforms import preprocessing_dict
from backend.errors import ConfigError
from backend.io.checkpoint import LoadedModel
from backend.workflows import test_resolution
from backend.workflows.test_resolution import check_sizes, choose_test_resolution
from tests.inference.tiny import IMG, tiny_net


def loaded(backbone: str) -> LoadedModel:
    return LoadedModel(tiny_net(backbone), {"model": {"backbone": backbone}}, list(DIAGNOSES),
                       {"mean": 0.0, "std": 1.0}, MetadataEncoder().to_dict(),
                       preprocessing_dict(DataConfig(img_size=IMG)), Path("x.ckpt"))


def test_sizes_are_checked_with_the_bad_entry_named():
    assert check_sizes([192, 224]) == [192, 224]
    for sizes, match in (([31], "got 31"), ([True], "got True"), ([2.5], "got 2.5"), ([64, 64], "64 is listed twice")):
        with pytest.raises(ConfigError, match=match):
            check_sizes(sizes)


def test_a_vision_transformer_is_refused_and_training_images_are_required():
    rows = pd.DataFrame({"image": ["a.png"]})
    with pytest.raises(ConfigError, match="vision transformer with a fixed token grid"):
        choose_test_resolution(loaded("vit_small_patch16_224"), rows, rows, [64])
    with pytest.raises(ConfigError, match="needs training images"):
        choose_test_resolution(loaded("dermaresnet_se_tiny"), rows, rows.iloc[:0], [64])


def test_unreadable_adaptation_images_are_a_clear_error_naming_the_side(tmp_path):
    model = loaded("dermaresnet_se_tiny")
    predictor = test_resolution._predictor(model, model.net, 80, batch_size=2)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    images = [str(tmp_path / "gone_1.jpg"), str(tmp_path / "gone_2.jpg")]
    with pytest.raises(ConfigError, match=r"test side 80 px: cannot adapt BatchNorm.*none of the 2 adaptation "
                                          r"images could be used \(first: .*gone_1"):
        test_resolution._adapt(predictor, images, num_workers=0)
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())  # statistics kept
