"""DermaResNet-SE (SE blocks, init, configurable widths/depths) and GeM pooling."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import DropPath, SEModule
from timm.models.resnet import BasicBlock

from backend.errors import ConfigError
from backend.models.dermaresnet import DermaResNet, GlobalAvgPool
from backend.models.gem import GeM
from backend.models.registry import create_backbone

# -- GeM ------------------------------------------------------------------------------------


def test_gem_p_is_readable_and_shapes():
    gem = GeM(p=3.0)
    assert gem.p.item() == pytest.approx(3.0, abs=1e-5)
    assert gem(torch.rand(2, 5, 4, 4)).shape == (2, 5)
    assert "p=3.0000" in repr(gem)


def test_gem_stays_positive_after_a_step_that_pushes_p_negative():
    for min_p in (1.0, 0.1):
        gem = GeM(p=1.5, min_p=min_p)
        opt = torch.optim.SGD(gem.parameters(), lr=1e4)
        gem.p.sum().backward()  # minimising p drives it down hard
        opt.step()
        assert gem.raw_p.item() < -100  # the raw value went far negative...
        assert gem.p.item() >= min_p > 0  # ...but p cannot
        out = gem(torch.rand(2, 3, 4, 4))
        assert torch.isfinite(out).all()


def test_gem_p_receives_gradients():
    gem = GeM(p=3.0)
    gem(torch.rand(2, 3, 4, 4)).sum().backward()
    assert gem.raw_p.grad is not None and gem.raw_p.grad.abs().item() > 0
    relu_map = torch.relu(torch.randn(2, 3, 4, 4))  # exact zeros: eps keeps the gradient finite
    gem.raw_p.grad = None
    gem(relu_map.requires_grad_()).sum().backward()
    assert torch.isfinite(gem.raw_p.grad).all() and torch.isfinite(relu_map.grad).all()


def test_gem_interpolates_between_average_and_max():
    x = torch.rand(2, 3, 5, 5) + 0.1
    assert torch.allclose(GeM(p=1.0 + 1e-6, min_p=0.5)(x), x.mean(dim=(2, 3)), atol=1e-4)
    high = GeM(p=80.0)(x)
    assert torch.allclose(high, x.amax(dim=(2, 3)), rtol=0.05)
    assert (high <= x.amax(dim=(2, 3)) + 1e-5).all()


def test_gem_fixed_p_and_half_precision():
    gem = GeM(p=3.0, learnable=False)
    assert list(gem.parameters()) == [] and "raw_p" in gem.state_dict()
    out = GeM()(torch.rand(1, 2, 3, 3).half() * 100)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        GeM(p=1.0, min_p=1.0)
    with pytest.raises(ValueError):
        GeM(p=2.0, min_p=0.0)


# -- DermaResNet -----------------------------------------------------------------------------


def _blocks(net: DermaResNet) -> list[BasicBlock]:
    return [m for m in net.modules() if isinstance(m, BasicBlock)]


def test_widths_and_depths_are_configurable():
    net = DermaResNet(widths=(8, 16, 24), depths=(1, 2, 3))
    assert net.feat_dim == 24
    assert net.stage_names == ["layer1", "layer2", "layer3"]
    assert [len(getattr(net.model, n)) for n in net.stage_names] == [1, 2, 3]
    assert net.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 24, 4, 4)  # stride 2*2*1*2*2
    assert len(net.stages()) == 4 and net.cam_layer is net.model.layer3


def test_every_block_has_se_and_a_zero_init_last_bn():
    net = DermaResNet(widths=(16, 32, 64, 128), depths=(1, 2, 1, 1), se_ratio=0.25)
    blocks = _blocks(net)
    assert len(blocks) == 5
    for block in blocks:
        assert isinstance(block.se, SEModule)
        assert block.se.fc1.out_channels == max(8, block.conv2.out_channels // 4)
        assert torch.count_nonzero(block.bn2.weight) == 0  # residual branch starts as zero
        assert torch.all(block.bn1.weight == 1)
    # Kaiming normal, fan-out: std = sqrt(2 / (out_channels * k * k))
    conv = net.model.layer4[0].conv1
    expected = math.sqrt(2.0 / (conv.out_channels * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)


def test_zero_init_makes_blocks_identity_like():
    net = DermaResNet(widths=(16, 16), depths=(2, 2)).eval()
    block = net.model.layer1[1]  # no downsample: out = relu(x + 0)
    x = torch.relu(torch.randn(1, 16, 8, 8))
    assert torch.allclose(block(x), x)


def test_presets_and_options():
    eighteen = create_backbone("dermaresnet_se_18")
    n_params = sum(p.numel() for p in eighteen.parameters())
    assert 10e6 < n_params < 13e6
    tiny = create_backbone("dermaresnet_se_tiny")
    assert tiny.widths == (16, 32, 64, 128) and tiny.depths == (1, 1, 1, 1)
    override = create_backbone("dermaresnet_se_tiny", widths=(8, 8, 8, 16))
    assert override.feat_dim == 16
    assert isinstance(tiny.pool, GeM) and tiny.pool.p.item() == pytest.approx(3.0, abs=1e-5)
    avg = create_backbone("dermaresnet_se_tiny", pool="avg", gem_p=2.0)
    assert isinstance(avg.pool, GlobalAvgPool) and "pool.raw_p" not in avg.state_dict()
    dropping = create_backbone("dermaresnet_se_tiny", drop_path_rate=0.2)
    assert any(isinstance(m, DropPath) for m in dropping.modules())


def test_gem_p_is_in_last_stage_and_excluded_from_weight_decay():
    net = create_backbone("dermaresnet_se_tiny")
    assert id(net.pool.raw_p) in {id(p) for p in net.stages()[-1].parameters()}
    assert "pool.raw_p" in net.no_weight_decay_params()
    assert "model.layer1.0.conv1.weight" not in net.no_weight_decay_params()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": (8, 16), "depths": (1,)}, "equal length"),
        ({"widths": (), "depths": ()}, "non-empty"),
        ({"widths": (8, 0), "depths": (1, 1)}, "widths must be >= 2"),
        ({"widths": (8, 8), "depths": (1, 0)}, "depths >= 1"),
        ({"se_ratio": 0.0}, "se_ratio"),
        ({"pool": "max"}, "pool must be one of"),
    ],
)
def test_invalid_settings_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_backbone("dermaresnet_se", **kwargs)


def test_forward_features_matches_timm_for_four_stages():
    for name in ("dermaresnet_se_tiny", "resnet18"):
        net = create_backbone(name).eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(net.forward_features(x), net.model.forward_features(x))


@pytest.mark.parametrize(("name", "img_size", "stage"), [
    ("dermaresnet_se_tiny", 224, "layer4"), ("dermaresnet_se_tiny", 128, "layer3"),
    ("dermaresnet_se_tiny", 64, "layer2"), ("dermaresnet_se_tiny", None, "layer4"), ("resnet18", 128, "layer3"),
])
def test_cam_layer_is_the_deepest_stage_with_a_useful_map(name, img_size, stage):
    backbone = create_backbone(name, img_size=img_size)
    assert backbone.cam_layer is getattr(backbone.model, stage)
    if img_size:  # the chosen map is at least MIN_CAM_SIDE wide, the next deeper one is not (or does not exist)
        seen = {}
        handle = backbone.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        backbone(torch.zeros(1, 3, img_size, img_size))
        handle.remove()
        assert seen["out"].shape[-1] >= backbone.MIN_CAM_SIDE
        if stage != "layer4":
            assert img_size // 32 < backbone.MIN_CAM_SIDE
