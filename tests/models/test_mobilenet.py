"""MobileNetV2 backbone: registration, Grad-CAM stage, stages, normalisation, local and shared start weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.data.schema import IMAGENET_MEAN, TF_INCEPTION_MEAN, TF_INCEPTION_STD
from backend.errors import CheckpointError, ConfigError
from backend.models.config import ModelConfig
from backend.models.lesion_net import build_model
from backend.models.registry import create_backbone, list_backbones, load_backbone_weights, read_state_dict
from tests.conftest import SHARED_PRETRAINED, SHARED_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registered_with_tf_padding_and_its_normalisation():
    assert "mobilenetv2_100" in list_backbones()
    tf = create_backbone("mobilenetv2_100", pad_type="same")
    symmetric = create_backbone("mobilenetv2_100")
    assert tf.input_mean == TF_INCEPTION_MEAN and tf.input_std == TF_INCEPTION_STD
    assert symmetric.input_mean == IMAGENET_MEAN
    tf.eval()
    with torch.no_grad():
        assert tf(torch.randn(2, 3, 64, 64)).shape == (2, tf.feat_dim) == (2, 1280)


def test_bad_pad_type_is_named():
    with pytest.raises(ConfigError, match="pad_type"):
        create_backbone("mobilenetv2_100", pad_type="reflect")


@pytest.mark.parametrize("img_size", [96, 128, 160, 224])
def test_cam_layer_map_is_at_least_7_wide(img_size):
    backbone = create_backbone("mobilenetv2_100", pad_type="same", img_size=img_size).eval()
    seen = {}

    def record(module, inputs, output) -> None:
        seen["shape"] = output.shape

    handle = backbone.cam_layer.register_forward_hook(record)
    with torch.no_grad():
        backbone(torch.zeros(1, 3, img_size, img_size))
    handle.remove()
    assert seen["shape"][-1] >= 7
    if img_size == 224:  # at 224 px the last block stage (7x7) is deep enough
        assert backbone.cam_layer is backbone.model.blocks[-1]


def test_stages_partition_every_parameter_once():
    backbone = create_backbone("mobilenetv2_100")
    ids = [id(p) for stage in backbone.stages() for p in stage.parameters()]
    assert len(ids) == len(set(ids)) == len(list(backbone.parameters()))
    assert len(backbone.stages()) == 1 + len(backbone.model.blocks)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_small_saved_state_dict_loads_through_the_same_path(tmp_path, suffix):
    torch.manual_seed(0)
    source = create_backbone("mobilenetv2_100", pad_type="same").eval()
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}  # timm layout, no prefix
    path = tmp_path / f"start{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(1)
    cfg = ModelConfig(backbone="mobilenetv2_100", backbone_kwargs={"pad_type": "same"}, pretrained_path=str(path))
    net = build_model(cfg, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.backbone(x), source(x), atol=1e-5)


def test_wrong_file_names_the_file_and_the_keys(tmp_path):
    wrong = tmp_path / "resnet_weights.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone("resnet18").state_dict().items()}, str(wrong))
    with pytest.raises(CheckpointError) as err:
        create_backbone("mobilenetv2_100", pretrained_path=wrong)
    text = str(err.value)
    assert str(wrong) in text and "model.conv_stem" in text and "layer1" in text


def test_partly_fitting_file_reports_missing_and_unexpected_keys(tmp_path, caplog):
    state = {k: v.contiguous() for k, v in create_backbone("mobilenetv2_100").model.state_dict().items()}
    state.pop("conv_head.weight")
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    report = load_backbone_weights(create_backbone("mobilenetv2_100"), path)
    assert report.missing == ["model.conv_head.weight"]
    assert report.unexpected == ["model.extra.weight"]


def _imagenet_top(backbone, image_path: Path) -> tuple[str, float]:
    from PIL import Image

    state = read_state_dict(SHARED_WEIGHTS)
    labels = (SHARED_PRETRAINED / "imagenet_labels.txt").read_text().splitlines()
    image = np.asarray(Image.open(image_path).convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    mean, std = np.array(backbone.input_mean), np.array(backbone.input_std)
    x = torch.from_numpy(((image - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        probs = (backbone.eval()(x) @ state["classifier.weight"].T + state["classifier.bias"]).softmax(-1)[0]
    top = int(probs.argmax())
    return labels[top + 1], float(probs[top])  # line 0 of the label file is TensorFlow's background class


def test_shared_imagenet_weights_call_the_cat_a_cat(shared_weights):
    backbone = create_backbone("mobilenetv2_100", pretrained_path=shared_weights, pad_type="same", img_size=224)
    label, prob = _imagenet_top(backbone, SHARED_PRETRAINED / "cat.bmp")
    assert "cat" in label.lower() and prob > 0.4, (label, prob)


def test_timm_opt_in_offline_fails_at_once_saying_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing can serve the weights
    cfg = ModelConfig(backbone="mobilenetv2_100", pretrained="timm")
    with pytest.raises(ConfigError) as err:
        build_model(cfg, img_size=224)
    text = str(err.value)
    assert "mobilenetv2_100" in text and "model.pretrained_path" in text and "offline" in text


def test_timm_opt_in_refused_for_non_timm_backbones_and_with_a_path():
    with pytest.raises(ConfigError, match="dermaresnet_se_tiny"):
        build_model(ModelConfig(backbone="dermaresnet_se_tiny", pretrained="timm"), img_size=224)
    with pytest.raises(ConfigError, match="only one"):
        ModelConfig(backbone="resnet50", pretrained="timm", pretrained_path="x.safetensors").validate()
    with pytest.raises(ConfigError, match="model.pretrained"):
        ModelConfig(pretrained="imagenet").validate()
    with pytest.raises(ConfigError, match="pad_type"):
        build_model(ModelConfig(backbone="mobilenetv2_100", pretrained="timm", backbone_kwargs={"pad_type": "same"}),
                    img_size=224)


def test_named_timm_tag_offline_names_the_full_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = ModelConfig(backbone="vit_small_patch16_224", pretrained="timm:dino", backbone_kwargs={"depth": 1})
    with pytest.raises(ConfigError, match=r"vit_small_patch16_224\.dino"):
        build_model(cfg, img_size=224)
    with pytest.raises(ConfigError, match="timm:<tag>"):
        ModelConfig(pretrained="timm:").validate()
