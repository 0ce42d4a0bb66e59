"""One input size: ``data.img_size`` builds the network and picks the stage Grad-CAM watches."""

from __future__ import annotations

import pytest
import torch

from backend.config import cli_layers, from_dict
from backend.data.metadata import MetadataEncoder
from backend.inference.explain import LesionCAM
from backend.models.lesion_net import build_experiment_model, metadata_width
from backend.training.config import ExperimentConfig
from tests.conftest import REPO_ROOT

RESNET50_YAML = REPO_ROOT / "cfgs" / "model" / "resnet50.yaml"


def cam_map_side(net, size: int) -> tuple[int, int]:
    """Height and width of the map Grad-CAM reads (the CAM layer's output) for one ``size`` px image."""
    shapes = []
    hook = net.backbone.cam_layer.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    try:
        with LesionCAM(net.eval(), head="malignant") as cam:
            heatmap = cam(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)))
    finally:
        hook.remove()
    assert heatmap.shape == (1, size, size)
    return shapes[-1][-2], shapes[-1][-1]


def test_resnet50_at_128_px_gets_a_cam_map_at_least_7_wide():
    """``--model_cfg cfgs/model/resnet50.yaml --img_size 128``: the CAM stage is chosen for 128 px, not 224."""
    merged = cli_layers(model_file=str(RESNET50_YAML), flags={"data.img_size": 128})
    cfg = from_dict(ExperimentConfig, merged)
    torch.manual_seed(0)
    net = build_experiment_model(cfg.model, cfg.data)  # what training builds (random init, no download)
    assert cfg.model.backbone == "resnet50" and net.backbone.img_size == 128
    height, width = cam_map_side(net, 128)
    assert min(height, width) >= 7  # the last stage would give 4x4 at 128 px


def test_an_old_disagreeing_model_img_size_is_ignored_for_data_img_size():
    merged = cli_layers(model_file=str(RESNET50_YAML), flags={"data.img_size": 128, "model.img_size": 224})
    with pytest.warns(DeprecationWarning, match=r"'model\.img_size' is deprecated and ignored: 'data\.img_size' "
                                                r"replaces it .*its value 224 differs from 'data\.img_size' \(128\)"):
        cfg = from_dict(ExperimentConfig, merged)
    torch.manual_seed(0)
    net = build_experiment_model(cfg.model, cfg.data)
    assert net.backbone.img_size == 128 and min(cam_map_side(net, 128)) >= 7


def test_metadata_switch_and_width_come_from_the_data_side():
    cfg = from_dict(ExperimentConfig, {"data": {"img_size": 32}, "model": {"backbone": "dermaresnet_se_tiny"}})
    assert build_experiment_model(cfg.model, cfg.data).meta_dim == MetadataEncoder().dim
    fitted = MetadataEncoder(age_mean=40.0, age_std=10.0, sites=["head/neck", "trunk"]).to_dict()
    assert build_experiment_model(cfg.model, cfg.data, fitted).meta_dim == 2 + 2 + 1 + 2 + 1  # the encoder's width
    cfg.data.use_metadata = False
    net = build_experiment_model(cfg.model, cfg.data, fitted)
    assert not net.use_metadata and net.meta_branch is None and metadata_width(False, fitted) == 0
