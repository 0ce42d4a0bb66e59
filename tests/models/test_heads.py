"""Metadata branch, fusion, task heads and the thickness scaler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.errors import CheckpointError
from backend.models.heads import FusionNeck, MetadataBranch, MultiTaskHeads, ThicknessScaler


def test_layers_shapes():
    assert MetadataBranch(15, 128)(torch.randn(4, 15)).shape == (4, 128)
    assert FusionNeck(160, 256)(torch.randn(4, 160)).shape == (4, 256)
    logits, thickness = MultiTaskHeads(256, 8)(torch.randn(4, 256))
    assert logits.shape == (4, 8) and thickness.shape == (4,)


def test_thickness_head_starts_at_the_mean():
    _, thickness = MultiTaskHeads(16, 8)(torch.randn(3, 16))
    assert torch.equal(thickness, torch.zeros(3))


@pytest.mark.parametrize("layer", [MetadataBranch(6, 8, dropout=0.0), FusionNeck(6, 8, dropout=0.0)])
def test_samples_do_not_influence_each_other_in_training(layer):
    layer.train()
    batch = torch.randn(5, 6)
    alone = layer(batch[:1])
    changed = batch.clone()
    changed[1:] = torch.randn(4, 6) * 10
    assert torch.allclose(layer(batch)[:1], alone, atol=1e-6)
    assert torch.allclose(layer(changed)[:1], alone, atol=1e-6)


def test_scaler_round_trip_tensor_array_float():
    scaler = ThicknessScaler(mean=0.5, std=0.4)
    mm = torch.tensor([0.0, 0.3, 0.76, 1.5, 4.2])
    assert torch.allclose(scaler.denormalise(scaler.normalise(mm)), mm, atol=1e-5)
    arr = np.array([0.0, 2.0])
    assert np.allclose(scaler.denormalise(scaler.normalise(arr)), arr)
    assert scaler.normalise(1.0) == pytest.approx((math.log1p(1.0) - 0.5) / 0.4)
    assert float(scaler.denormalise(-50.0)) == 0.0  # never negative millimetres


def test_scaler_keeps_unknown_and_open_bounds():
    scaler = ThicknessScaler(mean=0.3, std=0.5)
    z = scaler.normalise(torch.tensor([math.nan, math.inf, -1.0]))
    assert math.isnan(z[0]) and z[1] == math.inf
    assert z[2] == pytest.approx(-0.6)  # negative counts as 0 mm
    assert np.isnan(scaler.normalise(np.array([np.nan]))).all()


def test_scaler_fit_on_intervals():
    nan, inf = math.nan, math.inf
    lo = [0.5, 1.0, 0.0, 1.5, nan, nan]
    hi = [0.5, 2.0, 0.76, inf, nan, nan]
    scaler = ThicknessScaler.fit(lo, hi)
    expected = np.array([
        math.log1p(0.5),
        (math.log1p(1.0) + math.log1p(2.0)) / 2,
        math.log1p(0.76) / 2,
        math.log1p(1.5),
    ])
    assert scaler.mean == pytest.approx(expected.mean())
    assert scaler.std == pytest.approx(expected.std())


def test_scaler_fit_without_enough_labels_is_identity():
    assert ThicknessScaler.fit([math.nan, 0.8], [math.nan, 0.8]) == ThicknessScaler(0.0, 1.0)
    constant = ThicknessScaler.fit([1.0, 1.0], [1.0, 1.0])
    assert constant.std == 1.0 and constant.mean == pytest.approx(math.log1p(1.0))
    with pytest.raises(ValueError, match="same length"):
        ThicknessScaler.fit([1.0], [1.0, 2.0])


def test_scaler_dict_round_trip_and_validation():
    scaler = ThicknessScaler(mean=0.42, std=0.7)
    data = scaler.to_dict()
    assert data == {"mean": 0.42, "std": 0.7}
    assert ThicknessScaler.from_dict(data) == scaler
    with pytest.raises(CheckpointError, match="mean and std"):
        ThicknessScaler.from_dict({"mean": 0.1})
    with pytest.raises(CheckpointError, match="numbers"):
        ThicknessScaler.from_dict({"mean": "a", "std": 1.0})
    with pytest.raises(CheckpointError, match="std > 0"):
        ThicknessScaler.from_dict({"mean": 0.0, "std": 0.0})
