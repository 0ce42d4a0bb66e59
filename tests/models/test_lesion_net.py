"""LesionNet: config and builder, metadata handling, derived malignancy, param groups, freezing, Grad-CAM views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.config import from_dict, read_yaml, to_dict
from backend.data.schema import DIAGNOSES
from backend.errors import ConfigError
from backend.models.config import ModelConfig
from backend.models.lesion_net import (
    LesionNet,
    SingleHeadWrapper,
    build_model,
    malignant_log_prob,
    malignant_logit,
    malignant_prob,
)
from backend.models.registry import list_backbones
from tests.conftest import REPO_ROOT, make_lesion_image

META_DIM = 15
TINY = {"backbone": "dermaresnet_se_tiny", "meta_hidden": 16, "fusion_dim": 32, "dropout": 0.0}
TINY_VIT = {**TINY, "backbone": "vit_tiny_patch16_224",
            "backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}}


def build(cfg: dict, img_size: int = 32, use_metadata: bool = True) -> LesionNet:
    """The model of a model section at ``img_size`` (data.img_size), with the encoder's metadata width."""
    return build_model(from_dict(ModelConfig, cfg), img_size=img_size, meta_dim=META_DIM if use_metadata else 0)


def tiny_net(use_metadata: bool = True, **overrides) -> LesionNet:
    torch.manual_seed(0)
    return build({**TINY, **overrides}, use_metadata=use_metadata)


def images(batch: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def metadata(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, META_DIM, generator=torch.Generator().manual_seed(2))


# -- config and builder ----------------------------------------------------------------------


def test_model_config_defaults_and_validation():
    cfg = from_dict(ModelConfig, {})
    assert cfg.backbone in list_backbones()
    assert cfg.meta_hidden == 128 and cfg.fusion_dim == 256
    assert not any(hasattr(cfg, k) for k in ("img_size", "use_metadata", "meta_dim"))  # the data side decides
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="num_classes"):
        from_dict(ModelConfig, {"num_classes": 9})
    for bad, match in [({"meta_dropout": 1.5}, "model.meta_dropout"), ({"dropout": 1.0}, "model.dropout"),
                       ({"fusion_dim": 0}, "model.fusion_dim"), ({"backbone": " "}, "model.backbone")]:
        with pytest.raises(ConfigError, match=match):
            from_dict(ModelConfig, bad)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "cfgs" / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_model_configs_load(path: Path):
    cfg = from_dict(ModelConfig, read_yaml(path))
    assert cfg.backbone in list_backbones()


def test_shipped_model_configs_are_all_there():
    names = {p.stem for p in (REPO_ROOT / "cfgs" / "model").glob("*.yaml")}
    assert {"dermaresnet_se_tiny", "dermaresnet_se_18", "resnet50", "vit_small", "vit_base"} <= names


def test_unknown_backbone_in_config_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'effnet'"):
        build({"backbone": "effnet"})


def test_same_config_same_state_dict_keys():
    a, b = tiny_net(), tiny_net()
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict(), strict=True)


def test_common_kwargs_reach_builders_that_take_them():
    vit = build({**TINY_VIT, "drop_path_rate": 0.1}, img_size=48)
    assert vit.backbone.model.pos_embed.shape[1] == 1 + 9
    assert vit.backbone.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_pretrained_path_starts_the_backbone(tmp_path):
    source = tiny_net()
    path = tmp_path / "backbone.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    torch.manual_seed(123)
    target = build({**TINY, "pretrained_path": str(path)})
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key


# -- forward and metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_VIT], ids=["cnn", "vit"])
def test_forward_with_and_without_metadata(cfg):
    net = build(cfg).eval()
    with torch.no_grad():
        with_meta = net(images(), metadata())
        without = net(images())
    for out in (with_meta, without):
        assert out.diagnosis_logits.shape == (4, len(DIAGNOSES))
        assert out.thickness.shape == (4,)
        assert out.features.shape == (4, net.backbone.feat_dim)
    assert not with_meta.meta_dropped.any() and without.meta_dropped.all()
    assert not torch.allclose(with_meta.diagnosis_logits, without.diagnosis_logits)


def test_missing_metadata_uses_the_learned_embedding():
    net = tiny_net().eval()
    with torch.no_grad():
        net.meta_missing.fill_(0.5)
        emb, dropped = net.embed_metadata(None, 3)
    assert torch.equal(emb, torch.full((3, 16), 0.5)) and dropped.all()


def test_image_only_model_ignores_metadata():
    net = tiny_net(use_metadata=False).eval()
    assert net.meta_branch is None and net.meta_missing is None and not net.use_metadata
    assert not any(n.startswith("meta") for n, _ in net.named_parameters())
    with torch.no_grad():
        a, b = net(images(), metadata()), net(images())
    assert torch.equal(a.diagnosis_logits, b.diagnosis_logits) and a.meta_dropped is None


def test_wrong_metadata_shape_is_reported():
    with pytest.raises(ConfigError, match=r"\(4, 15\)"):
        tiny_net()(images(), torch.zeros(4, 12))


def test_meta_dropout_changes_only_dropped_samples():
    net = tiny_net(meta_dropout=0.0).train()  # dropout 0: the only randomness is metadata dropout
    x, meta = images(16), metadata(16)
    kept = net(x, meta).diagnosis_logits
    missing = net(x, None).diagnosis_logits
    net.meta_dropout = 0.5
    torch.manual_seed(3)
    out = net(x, meta)
    dropped = out.meta_dropped
    assert 0 < int(dropped.sum()) < 16
    assert torch.allclose(out.diagnosis_logits[dropped], missing[dropped], atol=1e-6)
    assert torch.allclose(out.diagnosis_logits[~dropped], kept[~dropped], atol=1e-6)
    assert not torch.allclose(kept[dropped], missing[dropped])


def test_no_meta_dropout_in_eval_mode():
    net = tiny_net(meta_dropout=1.0)
    net.eval()
    assert not net(images(), metadata()).meta_dropped.any()
    net.train()
    assert net(images(), metadata()).meta_dropped.all()


# -- derived malignancy --------------------------------------------------------------------------


def test_malignant_probability_is_the_sum_of_mel_bcc_scc():
    logits = torch.randn(6, len(DIAGNOSES)) * 3
    probs = logits.softmax(dim=1)
    expected = sum(probs[:, DIAGNOSES.index(d)] for d in ("MEL", "BCC", "SCC"))
    assert torch.allclose(malignant_prob(logits), expected, atol=1e-6)
    assert torch.allclose(malignant_log_prob(logits).exp(), expected, atol=1e-6)
    assert torch.allclose(torch.sigmoid(malignant_logit(logits)), expected, atol=1e-6)
    extreme = torch.tensor([[200.0, -200, -200, -200, -200, -200, -200, -200]])
    assert torch.isfinite(malignant_log_prob(extreme)).all() and torch.isfinite(malignant_logit(-extreme)).all()


def test_output_helpers():
    out = tiny_net().eval()(images(), metadata())
    assert torch.allclose(out.class_probs().sum(dim=1), torch.ones(4))
    assert torch.allclose(out.malignant_prob(), malignant_prob(out.diagnosis_logits))


# -- parameter groups and freezing ---------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_VIT], ids=["cnn", "vit"])
def test_param_groups(cfg):
    net = build(cfg)
    groups = net.param_groups(lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    assert len({g["name"] for g in groups}) == len(groups)

    group_of = {id(p): g for g in groups for p in g["params"]}
    for name, param in net.named_parameters():
        flat = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        assert (group_of[id(param)]["weight_decay"] == 0.0) == flat, name

    n_stages = len(net.backbone.stages())
    stem = groups[0]
    last = next(g for g in groups if g["name"].startswith(f"backbone.stage{n_stages - 1}"))
    head = next(g for g in groups if g["name"].startswith("heads"))
    assert stem["lr"] == pytest.approx(1e-3 * 0.5**n_stages)
    assert last["lr"] == pytest.approx(1e-3 * 0.5)
    assert stem["lr"] < last["lr"] < head["lr"] == 1e-3
    if cfg is TINY:
        assert group_of[id(net.backbone.pool.raw_p)]["weight_decay"] == 0.0
    else:
        assert group_of[id(net.backbone.model.cls_token)] is groups[1]  # stem, no decay

    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]
    with pytest.raises(ConfigError, match="layer_decay"):
        net.param_groups(lr=1e-3, weight_decay=0.05, layer_decay=1.5)


def test_layer_decay_one_gives_one_lr():
    groups = tiny_net().param_groups(lr=2e-4, weight_decay=0.0, layer_decay=1.0)
    assert {g["lr"] for g in groups} == {2e-4}


def test_freeze_backbone_keeps_weights_and_bn_statistics():
    net = tiny_net()
    net.freeze_backbone(True)
    net.train()
    assert net.backbone_frozen and not net.backbone.training and net.heads.training
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("backbone."))
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW(net.param_groups(lr=1e-2, weight_decay=0.05, layer_decay=0.75))
    loss = net(images(), metadata()).diagnosis_logits.logsumexp(dim=1).mean()
    loss.backward()
    optimizer.step()
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN running stats untouched
    assert net.heads.diagnosis.weight.grad is not None

    net.freeze_backbone(False)
    assert not net.backbone_frozen and net.backbone.training
    assert all(p.requires_grad for p in net.backbone.parameters())
    net.eval()
    assert not net.backbone.training


# -- Grad-CAM views --------------------------------------------------------------------------------


def test_single_head_wrapper_shapes():
    net = tiny_net().eval()
    x, meta = images(), metadata()
    assert SingleHeadWrapper(net, "diagnosis", meta)(x).shape == (4, 8)
    assert net.head_view("thickness", meta)(x).shape == (4, 1)
    malignant = net.head_view("malignant")(x)
    assert malignant.shape == (4, 1)
    assert torch.allclose(malignant[:, 0], malignant_logit(net(x).diagnosis_logits))
    mel = net.head_view("diagnosis", meta, index=0)(x)
    assert torch.allclose(mel[:, 0], net(x, meta).diagnosis_logits[:, 0])
    with pytest.raises(ConfigError, match="valid heads"):
        net.head_view("risk")


@pytest.mark.parametrize("cfg", [TINY, TINY_VIT], ids=["cnn", "vit"])
def test_grad_cam_runs_on_each_head(cfg):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = build(cfg)
    x = images(2)
    for head, target in (("diagnosis", 2), ("thickness", 0), ("malignant", 0)):
        cam = GradCAM(net.head_view(head, metadata(2)), [net.backbone.cam_layer],
                      reshape_transform=net.backbone.reshape_transform)
        heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * 2)
        assert heatmap.shape == (2, 32, 32) and np.isfinite(heatmap).all()


@pytest.mark.integration
def test_real_images_forward_and_cam(shared_data):
    from PIL import Image
    from pytorch_grad_cam import GradCAM

    names = sorted(p.name for p in (shared_data / "images").glob("ISIC_*.jpg"))[:2]
    arrays = [np.asarray(Image.open(shared_data / "images" / n).convert("RGB").resize((64, 64))) for n in names]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    batch = (batch - 0.5) / 0.25
    net = tiny_net().eval()
    out = net(batch, metadata(2))
    assert torch.isfinite(out.diagnosis_logits).all() and torch.isfinite(out.thickness).all()
    cam = GradCAM(net.head_view("malignant"), [net.backbone.cam_layer])
    assert cam(input_tensor=batch, targets=None).shape == (2, 64, 64)


def test_synthetic_lesions_train_one_step(rng):
    net = tiny_net()
    x = torch.from_numpy(np.stack([make_lesion_image(rng, 32) for _ in range(4)])).permute(0, 3, 1, 2).float() / 255
    optimizer = torch.optim.AdamW(net.param_groups(lr=1e-2, weight_decay=0.05, layer_decay=0.75))
    target = torch.tensor([0, 1, 2, 1])
    losses = []
    for _ in range(3):
        out = net(x, metadata())
        loss = torch.nn.functional.cross_entropy(out.diagnosis_logits, target) + out.thickness.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
