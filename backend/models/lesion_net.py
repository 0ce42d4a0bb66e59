"""LesionNet: backbone + optional metadata branch + late fusion + diagnosis and thickness heads.

``build_model(cfg, img_size=..., meta_dim=...)`` is the one way to build it from a
:class:`backend.models.config.ModelConfig` (training, checkpoint loading and the app all go through
it, so the same config always gives the same state-dict keys). What the data decides comes from the
data side: :func:`build_experiment_model` takes it from a whole config's data section (the input
size ``data.img_size``, the metadata switch ``data.use_metadata``) and the metadata encoder (the width).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from backend.data.config import DataConfig
from backend.data.metadata import MetadataEncoder
from backend.data.schema import DIAGNOSES, MALIGNANT_INDICES
from backend.errors import ConfigError
from backend.models.config import ModelConfig
from backend.models.heads import FusionNeck, MetadataBranch, MultiTaskHeads
from backend.models.registry import Backbone, accepts_kwarg, create_backbone

#: Columns of the diagnosis logits whose probabilities sum to P(benign) (all but MEL, BCC, SCC).
BENIGN_INDICES: tuple[int, ...] = tuple(i for i in range(len(DIAGNOSES)) if i not in MALIGNANT_INDICES)


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """Diagnosis probabilities ``(B, 8)`` from logits."""
    return logits.softmax(dim=-1)


def malignant_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """``log(P(MEL) + P(BCC) + P(SCC))`` per sample ``(B,)``, computed stably with logsumexp."""
    return torch.logsumexp(logits[:, MALIGNANT_INDICES], dim=-1) - torch.logsumexp(logits, dim=-1)


def malignant_prob(logits: torch.Tensor) -> torch.Tensor:
    """Derived P(malignant) ``(B,)``: the summed probability of the malignant diagnoses."""
    return malignant_log_prob(logits).exp()


def malignant_logit(logits: torch.Tensor) -> torch.Tensor:
    """Log-odds of the derived P(malignant) ``(B,)``; ``sigmoid`` of it is :func:`malignant_prob`."""
    return torch.logsumexp(logits[:, MALIGNANT_INDICES], dim=-1) - torch.logsumexp(logits[:, BENIGN_INDICES], dim=-1)


class LesionOutput(NamedTuple):
    """What :meth:`LesionNet.forward` returns.

    Attributes:
        diagnosis_logits: ``(B, 8)`` logits over ``schema.DIAGNOSES``.
        thickness: ``(B,)`` Breslow thickness in normalised units (see ``ThicknessScaler``).
        features: ``(B, feat_dim)`` pooled image features of the backbone.
        meta_dropped: ``(B,)`` bool, True where the "missing metadata" embedding was used
            (no metadata given, or dropped in training); None for image-only models.
    """

    diagnosis_logits: torch.Tensor
    thickness: torch.Tensor
    features: torch.Tensor
    meta_dropped: torch.Tensor | None = None

    def class_probs(self) -> torch.Tensor:
        """Diagnosis probabilities ``(B, 8)``."""
        return class_probs(self.diagnosis_logits)

    def malignant_prob(self) -> torch.Tensor:
        """Derived P(malignant) ``(B,)``."""
        return malignant_prob(self.diagnosis_logits)


class LesionNet(nn.Module):
    """Multi-task lesion network: 8-way diagnosis, derived benign/malignant, Breslow thickness.

    Image features (backbone, pooled) and, when enabled, a metadata embedding (MLP of the encoded
    age/sex/site vector) are concatenated (late fusion), projected to ``fusion_dim`` and read by
    two linear heads: diagnosis logits and one thickness value in normalised units.

    Missing metadata: a learned "missing" embedding (initialised at zero) stands in for the
    metadata branch output when ``meta`` is None, and, during training, for each sample with
    probability ``meta_dropout``; the model therefore learns to predict from the image alone and
    works when metadata is absent at inference. An image-only model ignores ``meta``.

    Benign/malignant is derived, not a separate head: ``P(malignant) = P(MEL) + P(BCC) + P(SCC)``.
    A separate binary head could disagree with the diagnosis head (e.g. "NV 90%" next to
    "malignant 70%"), which a clinician cannot act on; the derived value can never contradict the
    class probabilities, so the risk index stays consistent with the displayed diagnosis. Rows with
    only a benign/malignant label (UNK, label-only sources) still train it through a binary loss on
    the summed malignant probability (:func:`malignant_log_prob`).

    Args:
        backbone: Image feature extractor.
        use_metadata: Build the metadata branch.
        meta_dim: Length of the metadata vector.
        meta_hidden: Width of the metadata embedding.
        fusion_dim: Width of the fused representation.
        dropout: Dropout in the metadata MLP and the fusion layer.
        meta_dropout: Training-time per-sample probability of using the "missing" embedding.
    """

    def __init__(
        self,
        backbone: Backbone,
        use_metadata: bool = True,
        meta_dim: int = 15,
        meta_hidden: int = 128,
        fusion_dim: int = 256,
        dropout: float = 0.2,
        meta_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = len(DIAGNOSES)
        self.meta_dim = meta_dim if use_metadata else 0
        self.meta_dropout = meta_dropout
        if use_metadata:
            self.meta_branch: MetadataBranch | None = MetadataBranch(meta_dim, meta_hidden, dropout)
            self.meta_missing: nn.Parameter | None = nn.Parameter(torch.zeros(meta_hidden))
        else:
            self.meta_branch = None
            self.meta_missing = None
        in_dim = backbone.feat_dim + (meta_hidden if use_metadata else 0)
        self.fusion = FusionNeck(in_dim, fusion_dim, dropout)
        self.heads = MultiTaskHeads(fusion_dim, self.num_classes)
        self._backbone_frozen = False

    @property
    def use_metadata(self) -> bool:
        """Whether the network has a metadata branch."""
        return self.meta_branch is not None

    def embed_metadata(self, meta: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Metadata embedding ``(B, meta_hidden)`` and the mask of samples given the missing embedding.

        Raises:
            ConfigError: When ``meta`` is not ``(batch, meta_dim)``.
        """
        missing = self.meta_missing.unsqueeze(0).expand(batch, -1)
        if meta is None:
            return missing, torch.ones(batch, dtype=torch.bool, device=missing.device)
        if meta.ndim != 2 or meta.shape[0] != batch or meta.shape[1] != self.meta_dim:
            raise ConfigError(
                f"metadata tensor has shape {tuple(meta.shape)}, the model expects ({batch}, {self.meta_dim}) "
                "(the model's metadata width is the dim of the metadata encoder it was built with)"
            )
        emb = self.meta_branch(meta)
        dropped = torch.zeros(batch, dtype=torch.bool, device=emb.device)
        if self.training and self.meta_dropout > 0:
            dropped = torch.rand(batch, device=emb.device) < self.meta_dropout
            emb = torch.where(dropped.unsqueeze(1), missing.to(emb.dtype), emb)
        return emb, dropped

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> LesionOutput:
        """Predict from images ``(B, 3, H, W)`` and optional metadata ``(B, meta_dim)``."""
        features = self.backbone(images)
        parts, dropped = [features], None
        if self.meta_branch is not None:
            emb, dropped = self.embed_metadata(meta, features.shape[0])
            parts.append(emb.to(features.dtype))
        logits, thickness = self.heads(self.fusion(torch.cat(parts, dim=1)))
        return LesionOutput(logits, thickness, features, dropped)

    # -- training support --------------------------------------------------------------------

    @property
    def backbone_frozen(self) -> bool:
        """True while :meth:`freeze_backbone` holds the backbone fixed."""
        return self._backbone_frozen

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (warm-up stage: heads only) or unfreeze the backbone.

        Frozen means ``requires_grad=False`` on every backbone parameter and the backbone kept in
        eval mode, so its BatchNorm running statistics (and drop-path) stay as they are: updating
        BN statistics of a backbone whose weights do not move would shift its features under the
        heads being trained. :meth:`train` re-applies eval mode while frozen.
        """
        self._backbone_frozen = frozen
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)
        self.backbone.train(self.training and not frozen)

    def train(self, mode: bool = True) -> LesionNet:
        """Set train/eval mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
        """AdamW parameter groups with layer-wise LR decay over the backbone stages.

        With ``n`` backbone stages (stem first), stage ``i`` gets ``lr * layer_decay**(n - i)``: the
        stem ``lr * layer_decay**n``, the last stage ``lr * layer_decay``; the metadata branch,
        fusion and heads get ``lr``. Each stage is split into a decayed group and a ``weight_decay=0``
        group (biases, norms, GeM ``p``, class/position tokens, the missing embedding). Frozen
        parameters are included, so unfreezing later needs no new optimiser. Every group has a
        unique ``name`` (shown by Lightning's LearningRateMonitor) and its ``lr_scale``.

        Raises:
            ConfigError: On a non-positive ``lr`` or ``layer_decay`` outside (0, 1].
        """
        if lr <= 0 or not 0 < layer_decay <= 1:
            raise ConfigError(f"param_groups needs lr > 0 and layer_decay in (0, 1], got {lr}, {layer_decay}")
        groups: list[dict] = []

        def add(name: str, named: list[tuple[str, nn.Parameter]], no_decay: set[str], scale: float) -> None:
            decay = [p for n, p in named if n not in no_decay and p.ndim > 1]
            flat = [p for n, p in named if n in no_decay or p.ndim <= 1]
            for suffix, params, wd in (("", decay, weight_decay), (".no_decay", flat, 0.0)):
                if params:
                    groups.append({"name": name + suffix, "params": params, "lr": lr * scale,
                                   "lr_scale": scale, "weight_decay": wd})

        names = {id(p): n for n, p in self.backbone.named_parameters()}
        no_decay = self.backbone.no_weight_decay_params()
        stages = self.backbone.stages()
        for i, stage in enumerate(stages):
            named = [(names[id(p)], p) for p in stage.parameters()]
            add(f"backbone.stage{i}", named, no_decay, layer_decay ** (len(stages) - i))
        add("heads", [(n, p) for n, p in self.named_parameters() if not n.startswith("backbone.")], set(), 1.0)

        seen = [id(p) for g in groups for p in g["params"]]
        if len(seen) != len(set(seen)) or set(seen) != {id(p) for p in self.parameters()}:
            raise ConfigError(
                f"backbone {type(self.backbone).__name__}: stages() must hold every parameter exactly once"
            )
        return groups

    def head_view(self, head: str = "diagnosis", meta: torch.Tensor | None = None,
                  index: int | None = None) -> SingleHeadWrapper:
        """A module returning one head's output as a 2-D tensor, for Grad-CAM (see :class:`SingleHeadWrapper`)."""
        return SingleHeadWrapper(self, head=head, meta=meta, index=index)


class SingleHeadWrapper(nn.Module):
    """``forward(images) -> (B, K)`` for one head, the shape pytorch-grad-cam pairs targets with.

    Heads: ``diagnosis`` (``B, 8`` logits), ``thickness`` (``B, 1`` normalised) and
    ``malignant`` (``B, 1`` log-odds of the derived malignant probability).

    Args:
        net: The network (not copied: the wrapper shares its weights and mode).
        head: Which output to expose.
        meta: Metadata for the batch being explained, or None.
        index: Keep only this column (``B, 1``), or None for all.
    """

    HEADS: tuple[str, ...] = ("diagnosis", "thickness", "malignant")

    def __init__(self, net: LesionNet, head: str = "diagnosis", meta: torch.Tensor | None = None,
                 index: int | None = None) -> None:
        super().__init__()
        if head not in self.HEADS:
            raise ConfigError(f"unknown head '{head}'; valid heads: {', '.join(self.HEADS)}")
        self.net, self.head, self.meta, self.index = net, head, meta, index

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One head's output for ``images``."""
        out = self.net(images, self.meta)
        values = {
            "diagnosis": lambda: out.diagnosis_logits,
            "thickness": lambda: out.thickness.unsqueeze(1),
            "malignant": lambda: malignant_logit(out.diagnosis_logits).unsqueeze(1),
        }[self.head]()
        return values if self.index is None else values[:, self.index : self.index + 1]


#: Builder arguments every backbone gets (when its builder takes them): the input size, from the
#: data config, and ``model.drop_path_rate``.
COMMON_BACKBONE_KWARGS: tuple[str, ...] = ("img_size", "drop_path_rate")


def backbone_kwargs(cfg: ModelConfig, img_size: int) -> dict[str, Any]:
    """The builder arguments of ``cfg.backbone`` for inputs of side ``img_size`` (``data.img_size``).

    ``img_size`` (ViT position embeddings; the stage a CNN's Grad-CAM watches) and
    ``drop_path_rate`` go to builders that take them; ``model.backbone_kwargs`` are passed as given
    and win over those two.
    """
    common = {"img_size": int(img_size), "drop_path_rate": cfg.drop_path_rate}
    kwargs = {k: v for k, v in common.items() if accepts_kwarg(cfg.backbone, k)}
    kwargs.update(cfg.backbone_kwargs)
    return kwargs


def build_model(cfg: ModelConfig, *, img_size: int, meta_dim: int = 0) -> LesionNet:
    """Build the :class:`LesionNet` a model config describes (the one builder used everywhere).

    Args:
        cfg: The model section.
        img_size: Input side, ``data.img_size`` of the experiment (see :func:`backbone_kwargs`).
        meta_dim: Width of the encoded metadata vector (``MetadataEncoder.dim``) for a fusion model;
            0 builds an image-only model (``data.use_metadata: false``).

    ``pretrained: timm`` asks the builder for timm's own weights (an opt-in download).

    Raises:
        ConfigError: Unknown backbone or arguments it rejects, or a negative ``meta_dim``.
        CheckpointError: ``pretrained_path`` cannot be read or does not fit.
    """
    if meta_dim < 0:
        raise ConfigError(f"build_model: meta_dim must be >= 0 (0 = image only), got {meta_dim}")
    kwargs = backbone_kwargs(cfg, img_size)
    if cfg.pretrained:
        if not accepts_kwarg(cfg.backbone, "timm_pretrained"):
            raise ConfigError(
                f"model.pretrained: timm is for timm backbones; '{cfg.backbone}' has no timm pretrained tag "
                "(start it from a local file with model.pretrained_path instead)"
            )
        kwargs["timm_pretrained"] = True if cfg.pretrained == "timm" else cfg.pretrained.removeprefix("timm:")
    backbone = create_backbone(
        cfg.backbone, pretrained_path=cfg.pretrained_path, pretrained_prefix=cfg.pretrained_prefix, **kwargs
    )
    return LesionNet(
        backbone,
        use_metadata=meta_dim > 0,
        meta_dim=meta_dim,
        meta_hidden=cfg.meta_hidden,
        fusion_dim=cfg.fusion_dim,
        dropout=cfg.dropout,
        meta_dropout=cfg.meta_dropout,
    )


def metadata_width(use_metadata: bool, encoder: MetadataEncoder | dict[str, Any] | None = None) -> int:
    """The metadata vector's width a model gets: 0 without metadata, else the encoder's ``dim``.

    Args:
        use_metadata: ``data.use_metadata`` of the experiment.
        encoder: The fitted encoder (or its dict form, as checkpoints and bundles store it); None
            uses the schema's vocabularies, which every fitted encoder has (fitting only sets the
            age normalisation), so a config alone rebuilds the model.
    """
    if not use_metadata:
        return 0
    if isinstance(encoder, dict):
        encoder = MetadataEncoder.from_dict(encoder)
    return (encoder or MetadataEncoder()).dim


def build_experiment_model(model: ModelConfig, data: DataConfig,
                           metadata_encoder: MetadataEncoder | dict[str, Any] | None = None) -> LesionNet:
    """The network a whole experiment config describes: model section + what the data section decides.

    Input size ``data.img_size``; a metadata branch exactly when ``data.use_metadata``, as wide as
    the metadata encoder's vector (:func:`metadata_width`). Training, checkpoints and bundles all
    build through here.
    """
    return build_model(model, img_size=data.img_size, meta_dim=metadata_width(data.use_metadata, metadata_encoder))
