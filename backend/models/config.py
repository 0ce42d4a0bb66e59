"""Model section of the experiment config: which backbone, and how metadata and heads are fused.

Kept free of torch so that CLIs can parse and validate configs before loading any model code.
The backbone name is checked against the registry when the model is built
(:func:`backend.models.lesion_net.build_model`), not here.

What the data decides is not repeated here: the input size is ``data.img_size``, whether the model
reads metadata is ``data.use_metadata``, and the metadata vector's width is the metadata encoder's
(``MetadataEncoder.dim``). Whoever builds a model from a whole config passes them to ``build_model``.
The old ``model.img_size``, ``model.use_metadata`` and ``model.meta_dim`` keys still load, with a
deprecation warning (:data:`DEPRECATED_MODEL_KEYS`, declared by the configs that hold a model section).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from backend.config import DeprecatedKey, removed
from backend.errors import ConfigError

#: Old model keys, relative to a config with ``data`` and ``model`` sections; put them in its
#: ``DEPRECATED_KEYS``. ``model.use_metadata`` is not here: where it goes depends on the config.
DEPRECATED_MODEL_KEYS: dict[str, DeprecatedKey] = {
    "model.img_size": removed("data.img_size", "the network is built for the size the data is fed at"),
    "model.meta_dim": removed(None, "the width of the metadata vector comes from the metadata encoder"),
}


@dataclass
class ModelConfig:
    """Backbone, metadata branch, fusion and heads of :class:`backend.models.lesion_net.LesionNet`.

    The number of diagnosis classes is not configurable: it is ``len(schema.DIAGNOSES)``. The input
    size and the metadata switch and width are not here either: they come from the data side (see
    the module docstring); ``meta_hidden`` and ``meta_dropout`` apply when ``data.use_metadata`` is on.

    Attributes:
        backbone: Registered backbone name (``backend.models.registry.list_backbones()``).
        backbone_kwargs: Extra builder arguments, e.g. ``{widths: [16, 32, 64, 128], se_ratio: 0.25}``
            or, for ViTs, timm arguments such as ``{depth: 6}``.
        drop_path_rate: Stochastic-depth rate of the backbone (passed when its builder takes it).
        pretrained_path: Local weights file (``.safetensors`` or a torch file) to start the
            backbone from; None for random initialisation. Never downloaded (see ``pretrained``).
        pretrained_prefix: Key prefix to select and strip in that file (e.g. ``online_backbone.``);
            None tries the usual ones (``module.``, ``net.``, ``backbone.``...).
        pretrained: ``timm`` to start a timm backbone from timm's default pretrained tag of its
            architecture, or ``timm:<tag>`` for a named one (``timm:dino`` for
            ``vit_small_patch16_224.dino``): an opt-in download for users who are online (never in
            defaults, tests or CI); None otherwise.
        bn_reestimate_batches: Before training a pretrained start, batches of training images
            (eval transform) used to re-estimate its BatchNorm statistics without changing its
            eval-mode function (``backend.models.batchnorm``; needed for folded TFLite weights); 0 = off.
        meta_hidden: Width of the metadata MLP.
        fusion_dim: Width of the fused representation the heads read.
        dropout: Dropout in the metadata MLP and before the heads.
        meta_dropout: Training-time probability, per sample, of replacing the metadata embedding
            with the learned "missing" embedding, so the model still works without metadata.
    """

    #: Old keys of a model section loaded on its own (a whole config's ``DEPRECATED_KEYS`` catch them first).
    DEPRECATED_KEYS: ClassVar[dict[str, DeprecatedKey]] = {
        "img_size": removed(None, "data.img_size sets the network's input size"),
        "use_metadata": removed(None, "data.use_metadata switches the metadata branch"),
        "meta_dim": removed(None, "the width of the metadata vector comes from the metadata encoder"),
    }

    backbone: str = "dermaresnet_se_18"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float = 0.0
    pretrained_path: str | None = None
    pretrained_prefix: str | None = None
    pretrained: str | None = None
    bn_reestimate_batches: int = 0
    meta_hidden: int = 128
    fusion_dim: int = 256
    dropout: float = 0.2
    meta_dropout: float = 0.2

    def validate(self) -> None:
        """Reject impossible values with the key that holds them."""
        if not self.backbone.strip():
            raise ConfigError("model.backbone must name a registered backbone, got an empty string")
        for name in ("meta_hidden", "fusion_dim"):
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

    #: Where training starts from (not what the network is): a resumed run keeps its own, and never
    #: reads them again, because its checkpoint holds every weight.
    START_WEIGHT_KEYS: ClassVar[tuple[str, ...]] = ("pretrained_path", "pretrained_prefix", "pretrained",
                                                    "bn_reestimate_batches")

    def without_start_weights(self) -> ModelConfig:
        """A copy that builds the same network without reading or downloading start weights."""
        other = copy.deepcopy(self)
        other.drop_start_weights()
        return other

    def drop_start_weights(self) -> None:
        """Forget where training started from: a saved model's own weights replace them.

        Loading a checkpoint or bundle must neither read the start file (absent on another machine)
        nor download timm's pretrained weights (``pretrained: timm``): nothing is fetched at run time.
        """
        self.pretrained_path = None
        self.pretrained_prefix = None
        self.pretrained = None
