"""Model section of the experiment config: which backbone, and how metadata and heads are fused.

Kept free of torch so that CLIs can parse and validate configs before loading any model code.
The backbone name is checked against the registry when the model is built
(:func:`backend.models.lesion_net.build_model`), not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.errors import ConfigError


@dataclass
class ModelConfig:
    """Backbone, metadata branch, fusion and heads of :class:`backend.models.lesion_net.LesionNet`.

    The number of diagnosis classes is not configurable: it is ``len(schema.DIAGNOSES)``.

    Attributes:
        backbone: Registered backbone name (``backend.models.registry.list_backbones()``).
        backbone_kwargs: Extra builder arguments, e.g. ``{widths: [16, 32, 64, 128], se_ratio: 0.25}``
            or, for ViTs, timm arguments such as ``{depth: 6}``.
        img_size: Input side the backbone is built for (ViT position embeddings); keep it equal to
            ``data.img_size``. CNNs accept any size.
        drop_path_rate: Stochastic-depth rate of the backbone (passed when its builder takes it).
        pretrained_path: Local weights file (``.safetensors`` or a torch file) to start the
            backbone from; None for random initialisation. Nothing is ever downloaded.
        pretrained_prefix: Key prefix to select and strip in that file (e.g. ``online_backbone.``);
            None tries the usual ones (``module.``, ``net.``, ``backbone.``...).
        pretrained: ``timm`` to start a timm backbone from timm's default pretrained tag of its
            architecture, or ``timm:<tag>`` for a named one (``timm:dino`` for
            ``vit_small_patch16_224.dino``): an opt-in download for users who are online (never in
            defaults, tests or CI); None otherwise.
        bn_reestimate_batches: Before training a pretrained start, batches of training images
            (eval transform) used to re-estimate its BatchNorm statistics without changing its
            eval-mode function (``backend.models.batchnorm``; needed for folded TFLite weights); 0 = off.
        use_metadata: Fuse the age/sex/site vector with the image features.
        meta_dim: Length of the metadata vector (the datamodule's metadata encoder sets it).
        meta_hidden: Width of the metadata MLP.
        fusion_dim: Width of the fused representation the heads read.
        dropout: Dropout in the metadata MLP and before the heads.
        meta_dropout: Training-time probability, per sample, of replacing the metadata embedding
            with the learned "missing" embedding, so the model still works without metadata.
    """

    backbone: str = "dermaresnet_se_18"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = 224
    drop_path_rate: float = 0.0
    pretrained_path: str | None = None
    pretrained_prefix: str | None = None
    pretrained: str | None = None
    bn_reestimate_batches: int = 0
    use_metadata: bool = True
    meta_dim: int = 15
    meta_hidden: int = 128
    fusion_dim: int = 256
    dropout: float = 0.2
    meta_dropout: float = 0.2

    def validate(self) -> None:
        """Reject impossible values with the key that holds them."""
        if not self.backbone.strip():
            raise ConfigError("model.backbone must name a registered backbone, got an empty string")
        if self.img_size < 16:
            raise ConfigError(f"model.img_size must be >= 16, got {self.img_size}")
        for name in ("meta_dim", "meta_hidden", "fusion_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.pretrained is not None and self.pretrained != "timm" and not (
            self.pretrained.startswith("timm:") and self.pretrained[5:].strip()
        ):
            raise ConfigError(f"model.pretrained must be null, 'timm' or 'timm:<tag>', got {self.pretrained!r}")
        if self.pretrained and self.pretrained_path:
            raise ConfigError(
                "model.pretrained and model.pretrained_path both name start weights; set only one "
                f"(got pretrained={self.pretrained!r}, pretrained_path={self.pretrained_path!r})"
            )
        if self.bn_reestimate_batches < 0:
            raise ConfigError(f"model.bn_reestimate_batches must be >= 0, got {self.bn_reestimate_batches}")
        if not 0.0 <= self.meta_dropout <= 1.0:
            raise ConfigError(f"model.meta_dropout must be in [0, 1], got {self.meta_dropout}")
