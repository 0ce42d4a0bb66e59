"""Safe checkpoint loading: a Lightning checkpoint alone rebuilds its model and preprocessing.

Checkpoints are read with :func:`backend.files.safe_torch_load` (``weights_only=True``): tensors and plain containers
only, so a file carrying a pickled object (code) is refused instead of executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.config import from_dict
from backend.errors import CheckpointError, ConfigError
from backend.files import safe_torch_load
from backend.models.lesion_net import build_experiment_model
from backend.training.config import ExperimentConfig


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, with what inference needs beside the weights.

    Attributes:
        net: The network in eval mode on the CPU.
        config: The experiment config the checkpoint was trained with (plain dict).
        classes: Diagnosis names in head order.
        thickness_scaler: Thickness normalisation (dict form of ``ThicknessScaler``).
        metadata_encoder: Metadata encoding (dict form), or None for image-only models.
        preprocessing: The eval transform description.
        source: The file it came from.
    """

    net: Any
    config: dict[str, Any]
    classes: list[str]
    thickness_scaler: dict[str, float]
    metadata_encoder: dict[str, Any] | None
    preprocessing: dict[str, Any]
    source: Path


def load_lesion_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild a :class:`LesionNet` and its preprocessing from a training checkpoint.

    Raises:
        CheckpointError: When the file is unsafe, unreadable, not ours, or its weights do not fit.
    """
    path = Path(path)
    ckpt = safe_torch_load(path)
    hparams = ckpt.get("hyper_parameters")
    state = ckpt.get("state_dict")
    if not isinstance(hparams, dict) or "config" not in hparams or not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a DermaLens training checkpoint (no embedded config or state_dict)")
    if any(key.startswith("online_backbone.") for key in state):
        raise CheckpointError(f"{path}: a BYOL pretraining checkpoint, not a trained lesion model: start a "
                              "supervised run from it (scripts.train --pretrain_ckpt, after "
                              "scripts.pretrain_byol --export_only for a backbone.safetensors)")
    try:
        cfg = from_dict(ExperimentConfig, hparams["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: embedded config is invalid: {err}") from None
    cfg.model.drop_start_weights()  # the saved weights replace any start point; nothing is downloaded
    # Input size and metadata switch from the embedded data section, the width from the embedded encoder.
    net = build_experiment_model(cfg.model, cfg.data, hparams.get("metadata_encoder"))
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the embedded model config: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    net.eval()
    return LoadedModel(
        net=net,
        config=hparams["config"],
        classes=list(hparams.get("classes", [])),
        thickness_scaler=dict(hparams.get("thickness_scaler") or {}),
        metadata_encoder=hparams.get("metadata_encoder"),
        preprocessing=dict(hparams.get("preprocessing") or {}),
        source=path,
    )
