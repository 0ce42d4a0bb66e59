"""timm MobileNetV2 backbones: small, fast ImageNet-pretrainable CNNs for the CPU default model.

``mobilenetv2_100`` is registered here. Built with ``pad_type="same"`` it is the TensorFlow
layout (asymmetric "same" padding), which the ImageNet weights ported from TensorFlow / TFLite
need (every stride-2 layer is shifted otherwise); those weights expect RGB scaled to ``[-1, 1]``,
so such a backbone declares mean 0.5 and std 0.5 as its input normalisation. With timm's default
symmetric padding it is timm's own architecture and uses the ImageNet mean and std, like timm's
own pretrained tags.

Grad-CAM watches the deepest block stage whose map is at least 7 wide at the model's input size
(at 160 px the last stage is 5x5, so the stride-16 stage, 10x10, is used), the rule the ResNets follow.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from backend.data.schema import TF_INCEPTION_MEAN, TF_INCEPTION_STD
from backend.errors import ConfigError
from backend.models.dermaresnet import POOLS, GlobalAvgPool
from backend.models.gem import GeM
from backend.models.registry import (
    StageGroup,
    TimmBackbone,
    create_timm_model,
    register_backbone,
    timm_input_normalisation,
)


class MobileNetBackbone(TimmBackbone):
    """A timm EfficientNet-family model (MobileNetV2 here) with our pooling and Grad-CAM stage.

    Args:
        model: A timm ``EfficientNet`` built with ``num_classes=0, global_pool=''``.
        pool: ``avg`` or ``gem``.
        img_size: The input side the model is used at; it picks the Grad-CAM stage. None: the head.
    """

    #: Smallest Grad-CAM map side worth explaining with (224 px through stride 32 gives 7).
    MIN_CAM_SIDE = 7

    def __init__(self, model: nn.Module, pool: str = "avg", img_size: int | None = None) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"backbone pool must be one of {list(POOLS)}, got {pool!r}")
        self.model = model
        self.img_size = img_size
        self.pool = GeM() if pool == "gem" else GlobalAvgPool()
        self.feat_dim = int(model.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head convolution's map ``(B, 1280, H/32, W/32)``."""
        return self.model.forward_features(x)

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """Average (or GeM) pooling to ``(B, feat_dim)``."""
        return self.pool(features)

    @property
    def cam_layer(self) -> nn.Module:
        """The deepest block stage whose map is at least :attr:`MIN_CAM_SIDE` wide at ``img_size``."""
        blocks = self.model.blocks
        if self.img_size:
            for info in reversed(self.model.feature_info):
                module = str(info["module"])
                if not module.startswith("blocks."):
                    continue
                if self.img_size // int(info["reduction"]) >= self.MIN_CAM_SIDE:
                    return blocks[int(module.split(".")[1])]
        return blocks[-1]

    def body_stages(self) -> list[nn.Module]:
        """Each block stage; the head convolution, its norm and the pooling join the last one."""
        m = self.model
        stages = list(m.blocks)
        return [*stages[:-1], StageGroup(modules=[stages[-1], m.conv_head, m.bn2, self.pool])]


def timm_mobilenet(
    arch: str,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    pool: str = "avg",
    pad_type: str = "",
    timm_pretrained: bool | str = False,
    **timm_kwargs: Any,
) -> MobileNetBackbone:
    """A timm MobileNet; random weights unless ``timm_pretrained`` (opt-in download by timm).

    Args:
        arch: timm architecture name (``mobilenetv2_100``...).
        img_size: Input side the model is used at (any size works; it picks the Grad-CAM stage).
        drop_path_rate: Stochastic-depth rate.
        pool: ``avg`` or ``gem``.
        pad_type: ``same`` for TensorFlow padding (the TF/TFLite ImageNet weights need it), ``""``
            for timm's symmetric padding (timm's own weights).
        timm_pretrained: Start from timm's own pretrained tag (downloads; never the default).
        **timm_kwargs: Passed to ``timm.create_model``.
    """
    if pad_type not in ("", "same"):
        raise ConfigError(f"{arch}: pad_type must be '' (symmetric) or 'same' (TensorFlow), got {pad_type!r}")
    if pad_type == "same" and timm_pretrained:
        raise ConfigError(
            f"{arch}: timm's pretrained weights use symmetric padding; drop backbone_kwargs.pad_type=same "
            "or start from a local TensorFlow-layout file with model.pretrained_path"
        )
    model = create_timm_model(
        arch, timm_pretrained, num_classes=0, global_pool="", drop_path_rate=drop_path_rate, pad_type=pad_type,
        **timm_kwargs,
    )
    backbone = MobileNetBackbone(model, pool=pool, img_size=img_size)
    if pad_type == "same":
        backbone.input_mean, backbone.input_std = TF_INCEPTION_MEAN, TF_INCEPTION_STD
    elif timm_pretrained:
        backbone.input_mean, backbone.input_std = timm_input_normalisation(model)
    return backbone


for _arch in ("mobilenetv2_100",):
    register_backbone(_arch)(partial(timm_mobilenet, _arch))
