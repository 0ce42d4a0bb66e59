"""Backbone registry, the Backbone interface on every registered backbone, and local weight loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from backend.errors import CheckpointError, ConfigError
from backend.models import registry
from backend.models.registry import (
    Backbone,
    create_backbone,
    list_backbones,
    load_backbone_weights,
    register_backbone,
)

#: Tiny, fast settings per registered backbone (ViTs: 2 blocks of width 32).
TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}
TINY_KWARGS = {
    "dermaresnet_se": {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1)},
    "dermaresnet_se_tiny": {},
    "dermaresnet_se_18": {},
    "resnet18": {},
    "resnet50": {},
    "vit_tiny_patch16_224": TINY_VIT,
    "vit_small_patch16_224": TINY_VIT,
    "vit_base_patch16_224": TINY_VIT,
}
EXPECTED = set(TINY_KWARGS)


def tiny(name: str) -> Backbone:
    torch.manual_seed(0)
    return create_backbone(name, **TINY_KWARGS[name])


def test_registered_names():
    assert set(list_backbones()) >= EXPECTED
    assert list_backbones() == sorted(list_backbones())


def test_unknown_name_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        create_backbone("resnet5O")
    message = str(err.value)
    assert "resnet5O" in message
    assert "dermaresnet_se_tiny" in message and "vit_small_patch16_224" in message


def test_rejected_kwargs_are_a_config_error():
    with pytest.raises(ConfigError, match="dermaresnet_se_tiny"):
        create_backbone("dermaresnet_se_tiny", widths_typo=(8, 8, 8, 8))
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224"):
        create_backbone("vit_tiny_patch16_224", not_a_timm_arg=1, **TINY_VIT)


class _TinyConv(Backbone):
    def __init__(self, width: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.feat_dim = width

    def forward_features(self, x):
        return self.block(self.stem(x))

    def pool_features(self, features):
        return features.mean(dim=(2, 3))

    @property
    def cam_layer(self):
        return self.block

    def body_stages(self):
        return [self.block]


def test_register_a_new_backbone_without_touching_the_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    @register_backbone("tiny_conv_test")
    def tiny_conv(width: int = 4) -> _TinyConv:
        return _TinyConv(width)

    assert "tiny_conv_test" in list_backbones()
    backbone = create_backbone("tiny_conv_test", width=6)
    assert backbone(torch.randn(2, 3, 16, 16)).shape == (2, 6)
    stages = backbone.stages()
    assert [sum(p.numel() for p in s.parameters()) for s in stages] == [3 * 6 * 9 + 6, 6 * 6 * 9 + 6 + 12]
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("tiny_conv_test")(lambda: _TinyConv())

    # the model builder passes img_size / drop_path_rate only to builders that take them
    from backend.config import from_dict
    from backend.models.config import ModelConfig
    from backend.models.lesion_net import build_model

    net = build_model(from_dict(ModelConfig, {"backbone": "tiny_conv_test", "backbone_kwargs": {"width": 5},
                                              "drop_path_rate": 0.1}), img_size=64, meta_dim=15)
    assert net(torch.randn(2, 3, 16, 16)).diagnosis_logits.shape == (2, 8)
    assert net.backbone.feat_dim == 5


def test_builder_must_return_a_backbone(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_backbone("not_a_backbone")(lambda: nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="not a Backbone"):
        create_backbone("not_a_backbone")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_backward_and_interface(name):
    backbone = tiny(name)
    x = torch.randn(2, 3, 32, 32)
    feats = backbone(x)
    assert feats.shape == (2, backbone.feat_dim)
    feats.pow(2).mean().backward()
    no_grad = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    # stages: stem -> last stage, a partition of every parameter
    stages = backbone.stages()
    ids = [id(p) for s in stages for p in s.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()}
    assert all(any(True for _ in s.parameters()) for s in stages[:-1])
    # the Grad-CAM layer belongs to the last non-tail stage and to the backbone
    assert any(m is backbone.cam_layer for m in backbone.modules())

    no_decay = backbone.no_weight_decay_params()
    params = dict(backbone.named_parameters())
    assert no_decay <= set(params)
    assert {n for n, p in params.items() if p.ndim <= 1} <= no_decay
    assert all(params[n].ndim >= 2 for n in set(params) - no_decay)


@pytest.mark.parametrize("name", ["dermaresnet_se_tiny", "resnet18", "vit_small_patch16_224"])
def test_cam_layer_activation_and_reshape_transform(name):
    backbone = tiny(name).eval()
    seen = {}
    handle = backbone.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        backbone(torch.randn(2, 3, 64, 48))
    handle.remove()
    act = seen["out"]
    if name.startswith("vit"):
        assert act.shape == (2, 1 + 4 * 3, 32)
        cam_map = backbone.reshape_transform(act)
        assert cam_map.shape == (2, 32, 4, 3)
        # patch token (row 1, col 2) lands at [:, :, 1, 2]; the class token is dropped
        assert torch.equal(cam_map[:, :, 1, 2], act[:, 1 + 1 * 3 + 2])
    else:
        assert backbone.reshape_transform is None
        assert act.ndim == 4 and act.shape[1] == backbone.feat_dim


def test_vit_stage_layout_and_token_decay():
    backbone = tiny("vit_small_patch16_224")
    stages = backbone.stages()
    assert len(stages) == 1 + 2 + 1  # embeddings+tokens, 2 blocks, final norm
    stem_ids = {id(p) for p in stages[0].parameters()}
    assert id(backbone.model.cls_token) in stem_ids and id(backbone.model.pos_embed) in stem_ids
    assert id(backbone.model.norm.weight) in {id(p) for p in stages[-1].parameters()}
    assert {"model.cls_token", "model.pos_embed"} <= backbone.no_weight_decay_params()


def test_vit_accepts_other_image_sizes():
    backbone = create_backbone("vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=48)
    assert backbone.model.pos_embed.shape[1] == 1 + 9
    assert backbone(torch.randn(1, 3, 48, 48)).shape == (1, 32)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 32)  # dynamic_img_size resamples


# -- weights loading ------------------------------------------------------------------------


def _prefixed(backbone: Backbone, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in backbone.state_dict().items()}


def test_safetensors_round_trip_with_prefix(tmp_path):
    source = tiny("dermaresnet_se_tiny")
    with torch.no_grad():
        source.pool.raw_p.fill_(0.5)
    path = tmp_path / "byol_export.safetensors"
    save_file(_prefixed(source, "online_backbone."), str(path))

    target = tiny("dermaresnet_se_tiny")
    report = load_backbone_weights(target, path)
    assert len(report.matched) == len(source.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    upper = path.rename(tmp_path / "BYOL_EXPORT.SAFETENSORS")  # the suffix in any case is safetensors
    assert len(load_backbone_weights(tiny("dermaresnet_se_tiny"), upper).matched) == len(source.state_dict())
    path = upper.rename(path)

    explicit = load_backbone_weights(tiny("dermaresnet_se_tiny"), path, prefix="online_backbone.")
    assert len(explicit.matched) == len(source.state_dict())
    with pytest.raises(CheckpointError, match="no key starts with prefix 'teacher.'"):
        load_backbone_weights(target, path, prefix="teacher.")


def test_lightning_style_checkpoint_and_create_backbone(tmp_path):
    source = tiny("dermaresnet_se_tiny")
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {**_prefixed(source, "net.backbone."), "net.heads.w": torch.ones(2)}}, path)
    target = create_backbone("dermaresnet_se_tiny", pretrained_path=path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_plain_timm_weights_load_into_the_wrapper(tmp_path):
    import timm

    plain = timm.create_model("resnet18", pretrained=False)  # keys conv1.weight ..., fc.weight
    path = tmp_path / "resnet18.pth"
    torch.save(plain.state_dict(), path)
    target = create_backbone("resnet18")
    report = load_backbone_weights(target, path)
    assert report.missing == []
    assert sorted(report.unexpected) == ["model.fc.bias", "model.fc.weight"]
    assert torch.equal(target.model.conv1.weight, plain.conv1.weight)


def test_vit_position_embedding_is_resampled(tmp_path):
    source = create_backbone("vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=32)
    path = tmp_path / "vit.safetensors"
    save_file(_prefixed(source, "teacher.backbone."), str(path))
    target = create_backbone("vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=64)
    report = load_backbone_weights(target, path)
    assert "model.pos_embed" in report.matched and report.missing == []
    assert target.model.pos_embed.shape == (1, 1 + 16, 32)
    assert torch.equal(target.model.cls_token, source.model.cls_token)


def test_partial_match_reports_missing(tmp_path):
    source = tiny("dermaresnet_se_tiny")
    state = source.state_dict()
    dropped = [k for k in state if k.startswith("model.layer4.")]
    kept = {k: v for k, v in state.items() if k not in dropped}
    kept["extra.thing"] = torch.zeros(3)
    kept["model.layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)  # wrong shape: not loaded
    path = tmp_path / "partial.safetensors"
    save_file(kept, str(path))
    report = load_backbone_weights(tiny("dermaresnet_se_tiny"), path)
    assert set(dropped) <= set(report.missing)
    assert report.mismatched == ["model.layer1.0.conv1.weight"]
    assert "model.layer1.0.conv1.weight" in report.missing
    assert "model.extra.thing" in report.unexpected
    assert len(report.matched) == len(state) - len(dropped) - 1
    assert "missing" in report.summary()


def test_unrelated_or_unreadable_files_raise(tmp_path):
    backbone = tiny("dermaresnet_se_tiny")
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, str(other))
    with pytest.raises(CheckpointError, match="none of its 2 tensors fits"):
        load_backbone_weights(backbone, other)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_backbone_weights(backbone, garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(backbone, tmp_path / "absent.pt")
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_backbone_weights(backbone, empty)


class _Payload:
    """Pickled as an object: weights_only loading must refuse it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model.conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_backbone_weights(tiny("dermaresnet_se_tiny"), path)
