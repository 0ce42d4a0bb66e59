"""Grad-CAM: class and thickness targets on CNN and ViT backbones, batches, hooks released, overlay, memory."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM

from backend.data.schema import DIAGNOSES, MALIGNANT_INDICES
from backend.errors import ConfigError
from backend.inference.explain import ClassTarget, LesionCAM, ThicknessTarget, heatmap_to_image, overlay
from backend.models.registry import list_backbones
from tests.inference.tiny import IMG, lesions, tiny_kwargs, tiny_net, tiny_predictor

BACKBONES = ("dermaresnet_se_tiny", "vit_small_patch16_224")


@pytest.fixture(scope="module", params=BACKBONES)
def predictor(request):
    net = tiny_net(request.param)
    # Rows without metadata are encoded as "all unknown" and pass through the metadata branch; in an
    # untrained net its random output can push every class score's Grad-CAM to zero. Silence it so
    # these maps depend on the image alone, as a trained model's mostly do.
    with torch.no_grad():
        for param in net.meta_branch.parameters():
            param.zero_()
    return tiny_predictor(net)


def no_hooks(predictor) -> bool:
    layer = predictor.net.backbone.cam_layer
    modules = list(predictor.net.modules())
    return (not layer._forward_hooks and not layer._forward_pre_hooks
            and all(not m._forward_hooks and not m._backward_hooks for m in modules))


@pytest.mark.parametrize("target", ["MEL", 2, None, "thickness", "malignant"])
def test_heatmaps_for_class_and_thickness_targets_in_batches(predictor, target):
    images = [*lesions(3, size=80, seed=1), lesions(1, size=96, seed=2)[0][:, :70]]  # one non-square
    heatmaps = predictor.explain_batch(images, target=target)
    assert len(heatmaps) == 4
    for heat, img in zip(heatmaps, images, strict=True):
        assert heat.shape == img.shape[:2] and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    if target in ("MEL", "thickness"):
        assert any(h.max() > 0.5 for h in heatmaps)  # a real map, not all zero
    assert no_hooks(predictor)
    assert not any(p.requires_grad for p in predictor.net.parameters())


class MalignantLogOdds(torch.nn.Module):
    """``log(P(malignant) / P(benign))`` of the network's softmax as a ``(B, 1)`` output, written out here."""

    def __init__(self, net, meta):
        super().__init__()
        self.net, self.meta = net, meta

    def forward(self, x):
        probs = torch.softmax(self.net(x, self.meta).diagnosis_logits.double(), dim=1)
        benign = [i for i in range(len(DIAGNOSES)) if i not in MALIGNANT_INDICES]
        return torch.log(probs[:, list(MALIGNANT_INDICES)].sum(1) / probs[:, benign].sum(1)).unsqueeze(1)


def test_malignant_target_explains_the_malignant_log_odds_not_thickness(predictor):
    img = lesions(1, size=IMG, seed=31)[0]  # at the network's input size: the heatmap needs no mapping back
    meta, _ = predictor.encode_metadata(None, 1)
    x = predictor.preprocess([img]).clone().requires_grad_(True)  # the net's weights are frozen
    backbone = predictor.net.backbone
    wrapped = MalignantLogOdds(predictor.net, None if meta is None else torch.from_numpy(meta))
    with GradCAM(model=wrapped, target_layers=[backbone.cam_layer],
                 reshape_transform=backbone.reshape_transform) as cam:
        direct = cam(input_tensor=x, targets=[lambda out: out[0]])[0]
    assert direct.max() > 0.5  # a real map, not all zero
    malignant = predictor.explain(img, target="malignant")
    np.testing.assert_allclose(malignant, direct, atol=1e-4)
    thickness = predictor.explain(img, target="thickness")
    assert np.abs(malignant - thickness).max() > 0.1
    assert no_hooks(predictor)


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_registered_backbone(backbone):
    predictor = tiny_predictor(tiny_net(backbone, backbone_kwargs=tiny_kwargs(backbone)))
    images = lesions(2, seed=12)
    for target in ("MEL", "thickness"):
        heatmaps = predictor.explain_batch(images, target=target)
        assert [h.shape for h in heatmaps] == [(IMG, IMG)] * 2
        assert all(np.isfinite(h).all() and 0.0 <= h.min() <= h.max() <= 1.0 for h in heatmaps)
    assert no_hooks(predictor)


def test_batch_equals_one_by_one(predictor):
    """pytorch-grad-cam pairs target i with output row i: a batch must match single-image CAMs."""
    images = lesions(3, seed=4)
    for target in ("BCC", "thickness"):
        batch = predictor.explain_batch(images, target=target)
        single = [predictor.explain(img, target=target) for img in images]
        for a, b in zip(batch, single, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_fast_path_equals_full_backward(predictor):
    x = predictor.preprocess(lesions(2, seed=5))
    for head, target in (("diagnosis", ClassTarget(0)), ("thickness", ThicknessTarget())):
        maps = []
        for fast in (True, False):
            with LesionCAM(predictor.net, head=head, fast=fast) as cam:
                maps.append(cam(x, [target, target]))
                assert cam.outputs.shape == ((2, 8) if head == "diagnosis" else (2, 1))
        np.testing.assert_allclose(maps[0], maps[1], atol=1e-5)
    assert no_hooks(predictor)


def test_hooks_are_released_when_the_cam_fails(predictor):
    x = predictor.preprocess(lesions(2, seed=6))
    with pytest.raises(ValueError, match="targets"), LesionCAM(predictor.net) as cam:
        assert predictor.net.backbone.cam_layer._forward_hooks  # hooked inside the block
        cam(x, [ClassTarget(0)])  # one target for two images
    assert no_hooks(predictor)
    assert not any(p.requires_grad for p in predictor.net.parameters())


def test_metadata_and_explain_targets(predictor):
    img = lesions(1, seed=8)[0]
    with_meta = predictor.explain(img, target="MEL", metadata={"age_approx": 70, "sex": "male"})
    assert with_meta.shape == img.shape[:2]
    mixed = predictor.explain_batch([img, img], target="MEL", metadata=[{"sex": "female"}, None])
    np.testing.assert_allclose(mixed[1], predictor.explain(img, target="MEL"), atol=1e-4)
    with pytest.raises(ConfigError, match="unknown Grad-CAM target"):
        predictor.explain(img, target="melanoma")
    with pytest.raises(ConfigError, match="class index"):
        predictor.explain(img, target=8)
    # One diagnosis per image: each explained as given.
    per_image = predictor.explain_batch([img, img], ["MEL", "NV"])
    np.testing.assert_allclose(per_image[0], predictor.explain(img, target="MEL"), atol=1e-5)
    np.testing.assert_allclose(per_image[1], predictor.explain(img, target="NV"), atol=1e-5)
    np.testing.assert_allclose(predictor.explain_batch([img, img], np.array(["MEL", "NV"]))[1], per_image[1], atol=1e-6)
    with pytest.raises(ConfigError, match="one diagnosis of .* per image"):
        predictor.explain_batch([img, img], ["MEL"])


def test_heatmap_maps_back_onto_the_centre_crop():
    cam = np.ones((IMG, IMG), np.float32)
    heat = heatmap_to_image(cam, (64, 128, 3), IMG)  # landscape: the crop is the central square
    assert heat.shape == (64, 128)
    assert heat[:, 40:88].min() == pytest.approx(1.0) and heat[:, :24].max() == 0.0 and heat[:, -24:].max() == 0.0


def test_overlay_opacity():
    img = lesions(1, seed=9)[0]
    heat = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)  # resized to the image
    np.testing.assert_array_equal(overlay(img, heat, 0.0), img)
    full = overlay(img, heat, 1.0)
    half = overlay(img, heat, 0.5)
    assert full.shape == img.shape and full.dtype == np.uint8
    np.testing.assert_allclose(half.astype(float), (img.astype(float) + full) / 2, atol=1.01)
    with pytest.raises(ConfigError, match="opacity"):
        overlay(img, heat, 1.5)
    with pytest.raises(ConfigError, match="uint8"):
        overlay(img.astype(np.float32), heat, 0.5)


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux without psutil
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_200_consecutive_cams_do_not_grow_memory():
    predictor = tiny_predictor(tiny_net("dermaresnet_se_tiny", backbone_kwargs=tiny_kwargs("dermaresnet_se_tiny")))
    img = lesions(1, seed=11)[0]
    for _ in range(20):  # warm-up: allocator pools, lazy imports
        predictor.explain(img, target="MEL")
    gc.collect()
    before = _rss_mb()
    for i in range(200):
        predictor.explain(img, target="thickness" if i % 2 else None)
    gc.collect()
    growth = _rss_mb() - before
    assert growth < 50, f"RSS grew by {growth:.1f} MB over 200 Grad-CAM calls"
    assert no_hooks(predictor)
    assert torch.is_grad_enabled()


def test_default_target_is_the_class_predict_reports_with_tta(predictor, monkeypatch):
    img = lesions(1, seed=21)[0]
    plain_class = predictor.predict([img])[0].top_class
    forward = predictor.forward

    def tta_votes_otherwise(x, meta=None, tta=False):
        # A model whose averaged views call another class than its plain view (as happens near a boundary).
        out = forward(x, meta, tta=False)
        if tta:
            probs = np.full_like(out.probs, 0.01)
            probs[:, (DIAGNOSES.index(plain_class) + 1) % len(DIAGNOSES)] = 0.93
            out = out._replace(probs=probs)
        return out

    monkeypatch.setattr(predictor, "forward", tta_votes_otherwise)
    monkeypatch.setattr(predictor, "tta", True)
    reported = predictor.predict([img])[0].top_class
    assert reported != plain_class
    explained = predictor.explain(img)
    np.testing.assert_allclose(explained, predictor.explain(img, target=reported), atol=1e-6)
    assert not np.allclose(explained, predictor.explain(img, target=plain_class), atol=1e-3)
