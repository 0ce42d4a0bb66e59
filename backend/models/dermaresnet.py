"""ResNet backbones: DermaResNet-SE (our configurable SE-ResNet with GeM) and timm's ResNet-18/50.

DermaResNet-SE is a ResNet of basic blocks with squeeze-and-excitation after the second
convolution of every block, generalised-mean pooling, and configurable stage widths and depths,
so one definition gives a CPU-sized ``tiny`` model and an ``18``-sized one (~11M parameters).
It is assembled from timm's ResNet class rather than hand-written: timm already provides the
blocks, SE module, stochastic depth, Kaiming (fan-out) initialisation and zero-initialised last
BatchNorm gamma of every residual branch (each block starts as an identity, which stabilises
early training). Our choices on top: a deep 3x3 stem (ResNet-C: three 3x3 convolutions keep
more fine texture than one 7x7), average-pool shortcuts (ResNet-D: no information dropped by
strided 1x1 convolutions) and GeM pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from backend.errors import ConfigError
from backend.models.gem import GeM
from backend.models.registry import (
    StageGroup,
    TimmBackbone,
    create_timm_model,
    register_backbone,
    timm_input_normalisation,
)


class GlobalAvgPool(nn.Module):
    """Average pooling of ``(B, C, H, W)`` to ``(B, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over the spatial dimensions."""
        return x.mean(dim=(-2, -1))


#: Pooling choices of the ResNet backbones.
POOLS: tuple[str, ...] = ("gem", "avg")


class ResNetBackbone(TimmBackbone):
    """Any timm ResNet (``forward_features`` gives the last stage's map) with our pooling.

    Args:
        model: A timm ``ResNet`` built with ``num_classes=0, global_pool=''``.
        pool: ``gem`` (learnable generalised mean) or ``avg``.
        gem_p: Initial GeM exponent.
        img_size: The input side the model is used at; it picks the Grad-CAM stage (see
            :attr:`cam_layer`). None: the last stage.
    """

    #: Smallest Grad-CAM map side worth explaining with (224 px through stride 32 gives 7).
    MIN_CAM_SIDE = 7

    def __init__(self, model: nn.Module, pool: str = "gem", gem_p: float = 3.0, img_size: int | None = None) -> None:
        super().__init__()
        self.img_size = img_size
        if pool not in POOLS:
            raise ConfigError(f"backbone pool must be one of {list(POOLS)}, got {pool!r}")
        self.model = model
        self.pool = GeM(p=gem_p) if pool == "gem" else GlobalAvgPool()
        self.feat_dim = int(model.num_features)
        self.stage_names = [n for n, _ in model.named_children() if n.startswith("layer")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (``(B, C, H/32, W/32)`` for four stages).

        Runs the stem and ``layer1..layerN`` itself: timm's ``forward_features`` assumes exactly
        four stages, DermaResNet may have any number.
        """
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        for name in self.stage_names:
            x = getattr(m, name)(x)
        return x

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """GeM or average pooling to ``(B, feat_dim)``."""
        return self.pool(features)

    @property
    def cam_layer(self) -> nn.Module:
        """The deepest residual stage whose map is at least :attr:`MIN_CAM_SIDE` wide at ``img_size``.

        At 224 px that is the last stage (7x7). At 128 px the last stage is 4x4, where the
        ReLU of the gradient-weighted activations is all zero for most images (16 of 24 real images
        with the default model); one stage earlier (8x8) none was.
        """
        if self.img_size:
            for info in reversed(self.model.feature_info):
                name = str(info["module"])
                if name in self.stage_names and self.img_size // int(info["reduction"]) >= self.MIN_CAM_SIDE:
                    return getattr(self.model, name)
        return getattr(self.model, self.stage_names[-1])

    def body_stages(self) -> list[nn.Module]:
        """``layer1`` ... ``layerN``; the pooling (GeM's ``p``) joins the last stage."""
        layers = [getattr(self.model, n) for n in self.stage_names]
        return [*layers[:-1], StageGroup(modules=[layers[-1], self.pool])]


class DermaResNet(ResNetBackbone):
    """SE-ResNet of basic blocks with GeM pooling; see the module docstring for the design.

    Args:
        widths: Output channels of each stage (the stem ends at ``widths[0]`` channels).
        depths: Basic blocks per stage; as many as ``widths``.
        se_ratio: Squeeze-excitation bottleneck ratio (channels * ratio, at least 8).
        drop_path_rate: Stochastic-depth rate, rising linearly to this value in the last block.
        pool: ``gem`` or ``avg``.
        gem_p: Initial GeM exponent.
        img_size: Input side the model is used at (picks the Grad-CAM stage).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        se_ratio: float = 1 / 16,
        drop_path_rate: float = 0.0,
        pool: str = "gem",
        gem_p: float = 3.0,
        img_size: int | None = None,
    ) -> None:
        from timm.layers import SEModule
        from timm.models.resnet import BasicBlock, ResNet

        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if not widths or len(widths) != len(depths):
            raise ConfigError(f"dermaresnet widths {widths} and depths {depths} must be non-empty and of equal length")
        if min(widths) < 2 or min(depths) < 1:
            raise ConfigError(f"dermaresnet widths must be >= 2 and depths >= 1, got {widths} / {depths}")
        if not 0 < se_ratio <= 1:
            raise ConfigError(f"dermaresnet se_ratio must be in (0, 1], got {se_ratio}")
        model = ResNet(
            block=BasicBlock,
            layers=depths,
            channels=widths,
            num_classes=0,
            global_pool="",
            stem_type="deep",
            stem_width=widths[0] // 2,
            avg_down=True,
            drop_path_rate=drop_path_rate,
            zero_init_last=True,
            block_args={"attn_layer": partial(SEModule, rd_ratio=se_ratio)},
        )
        super().__init__(model, pool=pool, gem_p=gem_p, img_size=img_size)
        self.widths, self.depths = widths, depths


@register_backbone("dermaresnet_se")
def dermaresnet_se(
    widths: Sequence[int] = (64, 128, 256, 512),
    depths: Sequence[int] = (2, 2, 2, 2),
    se_ratio: float = 1 / 16,
    drop_path_rate: float = 0.0,
    pool: str = "gem",
    gem_p: float = 3.0,
    img_size: int | None = None,
) -> DermaResNet:
    """DermaResNet-SE with free widths and depths; any input size works, ``img_size`` picks the Grad-CAM stage."""
    return DermaResNet(widths, depths, se_ratio=se_ratio, drop_path_rate=drop_path_rate, pool=pool, gem_p=gem_p,
                       img_size=img_size)


#: Named presets, registered as backbones of their own (their kwargs can still be overridden).
PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    "dermaresnet_se_tiny": {"widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1)},
    "dermaresnet_se_small": {"widths": (32, 64, 128, 256), "depths": (1, 1, 2, 1)},
    "dermaresnet_se_18": {"widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2)},
}
for _name, _preset in PRESETS.items():
    register_backbone(_name)(partial(dermaresnet_se, **_preset))


def timm_resnet(
    arch: str, img_size: int | None = None, drop_path_rate: float = 0.0, pool: str = "avg",
    timm_pretrained: bool | str = False, **timm_kwargs,
) -> ResNetBackbone:
    """A timm ResNet with random weights; average pooling by default, as the architecture defines.

    Args:
        arch: timm architecture name (``resnet18``, ``resnet50``...).
        img_size: Input side the model is used at (any size works; it picks the Grad-CAM stage).
        drop_path_rate: Stochastic-depth rate.
        pool: ``avg`` or ``gem``.
        timm_pretrained: Start from timm's own pretrained tag (an opt-in download, never a default).
        **timm_kwargs: Passed to ``timm.create_model``.
    """
    model = create_timm_model(
        arch, timm_pretrained, num_classes=0, global_pool="", drop_path_rate=drop_path_rate, **timm_kwargs
    )
    backbone = ResNetBackbone(model, pool=pool, img_size=img_size)
    if timm_pretrained:
        backbone.input_mean, backbone.input_std = timm_input_normalisation(model)
    return backbone


for _arch in ("resnet18", "resnet50"):
    register_backbone(_arch)(partial(timm_resnet, _arch))
