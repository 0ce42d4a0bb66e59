"""One front door to every image backbone: ``create_backbone(name, pretrained_path=None, **kwargs)``.

Backbones register themselves by name with :func:`register_backbone` (the idea of timm's model
registry: a decorator fills a name -> builder table, so adding an architecture never touches the
code that builds one). Every builder returns a :class:`Backbone`, the small interface the rest of
DermaLens relies on: pooled features for the heads, the layer Grad-CAM should watch, the stage
partition used by layer-wise learning-rate decay, and the parameters exempt from weight decay.

The timm Vision Transformers live here too (the ResNets are in :mod:`backend.models.dermaresnet`);
all are built with ``pretrained=False`` by default: start weights come from a local file through
:func:`load_backbone_weights`. Only ``model.pretrained: timm`` (an explicit opt-in for users who
are online) lets timm download its own pretrained weights.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.data.schema import IMAGENET_MEAN, IMAGENET_STD
from backend.errors import CheckpointError, ConfigError
from backend.files import safe_torch_load

log = logging.getLogger(__name__)

#: Modules whose import registers more built-in backbones (imported on first use of the registry).
BUILTIN_MODULES: tuple[str, ...] = ("backend.models.dermaresnet", "backend.models.mobilenet")
#: Key prefixes stripped, outermost first, when searching a weights file for the backbone's keys:
#: DDP / torch.compile wrappers, a Lightning module's ``net.``, a LesionNet's ``backbone.``, BYOL/DINO exports.
DEFAULT_PREFIXES: tuple[str, ...] = (
    "state_dict.", "module.", "_orig_mod.", "net.", "backbone.", "online_backbone.", "teacher.", "encoder.",
    "student.", "target_backbone.",
)

#: Buffers every BatchNorm has with the same shape (), which say nothing about whether a file fits.
_COUNTER_SUFFIX = "num_batches_tracked"
#: A weights file must fill at least this share of the backbone's tensors to count as its start.
MIN_MATCHED_FRACTION = 0.5

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


class StageGroup(nn.Module):
    """A view that bundles modules and loose parameters into one stage of :meth:`Backbone.stages`.

    It is built on demand and never attached to the backbone, so it adds no state-dict keys.
    """

    def __init__(self, modules: list[nn.Module] = (), params: list[tuple[str, nn.Parameter]] = ()) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        for name, param in params:
            self.register_parameter(name.replace(".", "__"), param)


class Backbone(nn.Module):
    """Interface of every registered backbone.

    Attributes:
        feat_dim: Size of the pooled feature vector returned by :meth:`forward`.
        input_mean, input_std: Per-channel normalisation of ``[0, 1]`` RGB the backbone's start
            weights expect (ImageNet's by default; TensorFlow-ported weights use 0.5 / 0.5). Training
            copies them into ``data.mean`` / ``data.std`` unless those are set, so they travel into
            every checkpoint and bundle with the rest of the preprocessing.
        reshape_transform: None for CNNs; for token models a function mapping the tokens of
            :attr:`cam_layer` ``(B, prefix + H*W, C)`` to a ``(B, C, H, W)`` map (pytorch-grad-cam's
            ``reshape_transform`` argument).
    """

    feat_dim: int
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features: a ``(B, C, H, W)`` map for CNNs, ``(B, tokens, C)`` for ViTs."""
        raise NotImplementedError

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """Pool :meth:`forward_features` output into ``(B, feat_dim)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled image features ``(B, feat_dim)``."""
        return self.pool_features(self.forward_features(x))

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose activations and gradients Grad-CAM should use (the last stage)."""
        raise NotImplementedError

    def body_stages(self) -> list[nn.Module]:
        """The stages after the stem, in forward order; the stem is whatever they leave out."""
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """Stem first, last stage last; every backbone parameter is in exactly one stage.

        The stem collects every parameter no later stage claims (stem convolutions, patch
        embedding, class and position tokens), which makes the partition complete by construction.
        """
        body = self.body_stages()
        claimed = {id(p) for stage in body for p in stage.parameters()}
        stem = StageGroup(params=[(n, p) for n, p in self.named_parameters() if id(p) not in claimed])
        return [stem, *body]

    def no_weight_decay_params(self) -> set[str]:
        """Names (as in ``named_parameters``) to exempt from weight decay.

        Every parameter with at most one dimension (biases, norm scales and shifts, GeM's ``p``)
        plus the extra names from :meth:`extra_no_weight_decay` (position and class tokens).
        """
        names = {n for n, p in self.named_parameters() if p.ndim <= 1}
        own = dict(self.named_parameters())
        return names | {n for n in self.extra_no_weight_decay() if n in own}

    def extra_no_weight_decay(self) -> set[str]:
        """Multi-dimensional parameters that must not be decayed (tokens); none by default."""
        return set()

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a prefix-stripped weights dict onto this backbone's keys (identity by default)."""
        return state


class TimmBackbone(Backbone):
    """A backbone around a timm model stored as ``self.model`` (state-dict keys ``model.*``).

    Weights saved from this wrapper (``model.layer1...``) and plain timm weights
    (``layer1...``) both load: keys that are neither ours nor under ``model.`` get the prefix.
    """

    model: nn.Module

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Put bare timm keys under ``model.`` and let :meth:`filter_timm_state` convert them."""
        own = set(self.state_dict())
        outer = {k: v for k, v in state.items() if k in own and not k.startswith("model.")}
        inner = {k.removeprefix("model."): v for k, v in state.items() if k not in outer}
        inner = self.filter_timm_state(inner)
        return {**outer, **{f"model.{k}": v for k, v in inner.items()}}

    def filter_timm_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for timm's per-architecture checkpoint conversion (identity by default)."""
        return state


class VitBackbone(TimmBackbone):
    """A timm Vision Transformer (DINO-style: class token, learnt position embedding).

    Pooled features are timm's pre-logits (the class token after the final norm for
    ``global_pool='token'``). With ``dynamic_img_size`` (default) the position embedding is
    resampled to any input size, so a model built for 224 px still runs at 256 px or 128 px.

    Args:
        arch: timm architecture name.
        img_size: Input side the position embedding is built for.
        drop_path_rate: Stochastic depth rate.
        dynamic_img_size: Accept other input sizes at run time.
        timm_pretrained: Start from timm's own pretrained tag (an opt-in download; see :func:`create_timm_model`).
        **timm_kwargs: Passed to ``timm.create_model`` (e.g. ``depth``, ``embed_dim``, ``num_heads``).
    """

    def __init__(
        self, arch: str, img_size: int = 224, drop_path_rate: float = 0.0, dynamic_img_size: bool = True,
        timm_pretrained: bool | str = False, **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.model = create_timm_model(
            arch, timm_pretrained, num_classes=0, img_size=img_size, drop_path_rate=drop_path_rate,
            dynamic_img_size=dynamic_img_size, use_naflex=False, **timm_kwargs,
        )
        if timm_pretrained:
            self.input_mean, self.input_std = timm_input_normalisation(self.model)
        self.feat_dim = int(self.model.num_features)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self._grid = tuple(self.model.patch_embed.grid_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, prefix + H*W, C)`` after the final norm; remembers the patch grid."""
        self._grid = tuple(self.model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))
        return self.model.forward_features(x)

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-logits pooling of timm (class token by default)."""
        return self.model.forward_head(features, pre_logits=True)

    @property
    def cam_layer(self) -> nn.Module:
        """``blocks[-1].norm1``, the layer pytorch-grad-cam recommends for ViTs."""
        return self.model.blocks[-1].norm1

    def reshape_transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the prefix (class/register) tokens and fold the patch tokens into ``(B, C, H, W)``."""
        patches = tokens[:, self.num_prefix_tokens:]
        b, n, c = patches.shape
        h, w = self._grid
        if h * w != n:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"cannot fold {n} patch tokens into a grid (last input grid was {h}x{w})")
            h = w = side
        return patches.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def body_stages(self) -> list[nn.Module]:
        """One stage per transformer block, then the final norms."""
        m = self.model
        tail = [mod for mod in (m.norm, m.fc_norm, getattr(m, "attn_pool", None), m.head) if mod is not None]
        return [*m.blocks, StageGroup(modules=tail)]

    def extra_no_weight_decay(self) -> set[str]:
        """The list timm gives (``pos_embed``, ``cls_token``, ``reg_token``...), under ``model.``."""
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def filter_timm_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the ViT converter of timm: resamples ``pos_embed`` / patch kernels, converts DINOv2, CLIP..."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, self.model)


#: Environment variables under which huggingface_hub (timm's weight store) never touches the network.
_HUB_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def create_timm_model(arch: str, pretrained: bool | str = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for every timm-based backbone: random weights unless ``pretrained``.

    ``pretrained=True`` is the opt-in ``model.pretrained: timm`` for users who are online: timm
    downloads (or reads from its cache) the architecture's default pretrained tag; a string names
    the tag (``model.pretrained: timm:dino`` gives ``vit_small_patch16_224.dino``). It is never set
    by a default config, a test or CI. When the weights cannot be had (offline, or
    ``HF_HUB_OFFLINE=1``), it fails at once with what to download and where to point the config.

    Raises:
        ConfigError: timm rejects the arguments, or the pretrained weights cannot be obtained.
    """
    import os

    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    if isinstance(pretrained, str):
        arch = f"{arch}.{pretrained}"
    how = (
        f"model.pretrained: timm needs timm's '{arch}' weights, which could not be obtained{{why}}. "
        f"On a machine that is online, run `python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"` "
        "once to fill the Hugging Face cache (HF_HOME), or save those weights to a file and set "
        "model.pretrained_path to it (and model.pretrained to null)."
    )
    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in _HUB_OFFLINE_ENV):
        try:  # offline mode: only a cached copy can serve, and huggingface_hub says so quickly
            return timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as err:  # any hub or cache failure means "not available offline"
            raise ConfigError(how.format(why=f" offline (HF_HUB_OFFLINE is set): {type(err).__name__}")) from None
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")  # fail fast when the hub cannot be reached
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # connection, missing cache entry, bad tag
        raise ConfigError(how.format(why=f": {type(err).__name__}: {str(err)[:200]}")) from None


def timm_input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std of a timm model's pretrained config (ImageNet's when it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator adding a backbone builder to the registry under ``name``.

    Raises:
        ConfigError: When ``name`` is already registered (names must stay unambiguous).
    """

    def decorator(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ConfigError(f"backbone name '{name}' is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def list_backbones() -> list[str]:
    """Every registered backbone name, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable[..., Backbone]:
    """The builder registered as ``name``.

    Raises:
        ConfigError: Naming the unknown backbone and listing the registered ones.
    """
    _load_builtins()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown backbone '{name}' (model.backbone); registered backbones: {valid}")
    return _REGISTRY[name]


def accepts_kwarg(name: str, key: str) -> bool:
    """Whether the builder of ``name`` takes keyword ``key`` (explicitly or through ``**kwargs``)."""
    params = inspect.signature(get_builder(name)).parameters
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def create_backbone(
    name: str, pretrained_path: str | Path | None = None, pretrained_prefix: str | None = None, **kwargs: Any
) -> Backbone:
    """Build a registered backbone, optionally starting from a local weights file.

    Args:
        name: Registered name (see :func:`list_backbones`).
        pretrained_path: Local ``.safetensors`` or torch weights file; None for random init.
        pretrained_prefix: Key prefix to select and strip in that file; None tries :data:`DEFAULT_PREFIXES`.
        **kwargs: Builder arguments (widths, depths, img_size, drop_path_rate...).

    Raises:
        ConfigError: Unknown name or arguments the builder rejects.
        CheckpointError: The weights file is unreadable or none of its keys fits the backbone.
    """
    builder = get_builder(name)
    try:
        inspect.signature(builder).bind(**kwargs)
        backbone = builder(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"backbone '{name}' rejected its arguments {sorted(kwargs)} (model.backbone_kwargs): {err}"
        ) from err
    if not isinstance(backbone, Backbone):
        raise ConfigError(f"backbone builder '{name}' returned {type(backbone).__name__}, not a Backbone")
    if pretrained_path is not None:
        load_backbone_weights(backbone, pretrained_path, prefix=pretrained_prefix)
    return backbone


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did, key by key (backbone state-dict names).

    Attributes:
        matched: Keys loaded from the file.
        missing: Backbone keys left at their initial value.
        unexpected: File keys (after prefix stripping) the backbone does not have.
        mismatched: Keys present on both sides with different shapes (not loaded, also in ``missing``).
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        text = f"{len(self.matched)} matched, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        if self.mismatched:
            text += f", {len(self.mismatched)} shape-mismatched (e.g. {self.mismatched[:3]})"
        if self.missing:
            text += f"; missing e.g. {self.missing[:3]}"
        return text


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``name -> tensor`` dict, without executing pickled code.

    ``.safetensors`` files go through safetensors; anything else through ``torch.load`` with
    ``weights_only=True``. Nested dicts (a Lightning checkpoint's ``state_dict``, DINO's
    ``teacher``) are flattened with dotted names and non-tensor entries are dropped.

    Raises:
        CheckpointError: Naming the file when it is missing, unsafe, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file not found: {path} (model.pretrained_path)")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from None
    else:

        obj = safe_torch_load(path)  # weights_only=True; every failure is a CheckpointError naming the file

    flat: dict[str, torch.Tensor] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            flat[prefix.rstrip(".")] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")

    visit(obj, "")
    if not flat:
        raise CheckpointError(f"{path}: holds no tensors (expected a state dict)")
    return flat


def _candidate_views(state: dict[str, torch.Tensor], max_depth: int = 4) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The state dict under every chain of :data:`DEFAULT_PREFIXES` its keys start with."""
    views, frontier = [("", state)], [("", state)]
    for _ in range(max_depth):
        nxt = []
        for chain, view in frontier:
            for prefix in DEFAULT_PREFIXES:
                sub = {k[len(prefix):]: v for k, v in view.items() if k.startswith(prefix)}
                if sub:
                    nxt.append((chain + prefix, sub))
        views.extend(nxt)
        frontier = nxt
    return views


def load_backbone_weights(backbone: Backbone, path: str | Path, prefix: str | None = None) -> LoadReport:
    """Load a local weights file into ``backbone`` (non-strict) and report what fitted.

    Args:
        backbone: The backbone to fill.
        path: ``.safetensors`` or torch file (a raw state dict, a Lightning checkpoint, a BYOL export...).
        prefix: Keep only keys starting with this prefix and strip it (e.g. ``"online_backbone."``).
            None tries every chain of :data:`DEFAULT_PREFIXES` and keeps the one matching most keys.

    Returns:
        The :class:`LoadReport`; it is also logged.

    Raises:
        CheckpointError: When the file is unreadable or fills less than half of the backbone's
            tensors (naming the file and the missing, unexpected and mismatched keys).
    """
    state = read_state_dict(path)
    if prefix:
        view = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not view:
            raise CheckpointError(
                f"{path}: no key starts with prefix '{prefix}' (model.pretrained_prefix); "
                f"keys look like {list(state)[:3]}"
            )
        views = [(prefix, view)]
    else:
        views = _candidate_views(state)
    own = backbone.state_dict()

    best: tuple[int, str, dict[str, torch.Tensor]] = (0, "", {})
    errors: list[str] = []
    for chain, view in views:
        try:
            adapted = backbone.adapt_state_dict(dict(view))
        except (RuntimeError, ValueError, KeyError, IndexError) as err:  # a view that is not this architecture
            errors.append(f"under prefix '{chain}': {err}")
            continue
        score = sum(1 for k, v in adapted.items()
                    if k in own and tuple(v.shape) == tuple(own[k].shape) and not k.endswith(_COUNTER_SUFFIX))
        if score > best[0]:
            best = (score, chain, adapted)
    score, chain, adapted = best
    if score == 0:
        detail = f"; conversion failed {errors[0]}" if errors else ""
        raise CheckpointError(
            f"{path}: none of its {len(state)} tensors fits backbone {type(backbone).__name__} "
            f"(file keys look like {list(state)[:3]}, the backbone expects keys like {list(own)[:3]}); "
            f"is it the right architecture, or does it need model.pretrained_prefix?{detail}"
        )
    report = LoadReport()
    for key, value in adapted.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append(key)
        else:
            report.matched.append(key)
    matched = set(report.matched)
    report.missing = [k for k in own if k not in matched]
    weights = [k for k in own if not k.endswith(_COUNTER_SUFFIX)]
    fitted = sum(1 for k in weights if k in matched)
    if fitted < MIN_MATCHED_FRACTION * len(weights):
        raise CheckpointError(
            f"{path}: only {fitted} of the backbone's {len(weights)} weight tensors fit "
            f"{type(backbone).__name__} (prefix '{chain}'); missing e.g. {report.missing[:4]}, "
            f"unexpected e.g. {report.unexpected[:4]}, shape-mismatched e.g. {report.mismatched[:4]}; "
            "is it the right architecture and padding, or does it need model.pretrained_prefix?"
        )
    backbone.load_state_dict({k: adapted[k] for k in report.matched}, strict=False)
    log.info("loaded %s (prefix '%s') into %s: %s", path, chain, type(backbone).__name__, report.summary())
    return report


for _arch in ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"):
    register_backbone(_arch)(partial(VitBackbone, _arch))
