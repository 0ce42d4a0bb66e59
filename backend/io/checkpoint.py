"""Safe checkpoint loading: a Lightning checkpoint alone rebuilds its model and preprocessing.

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors and plain containers
only, so a file carrying a pickled object (code) is refused instead of executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import CheckpointError


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


def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` on the CPU; every failure is a :class:`CheckpointError`."""
    import pickle
    import struct
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"(weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            struct.error, zipfile.BadZipFile) as err:
        # Truncated or garbage files surface as any of these from torch's weights-only unpickler.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_lesion_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild a :class:`LesionNet` and its preprocessing from a training checkpoint.

    Raises:
        CheckpointError: When the file is unsafe, unreadable, not ours, or its weights do not fit.
    """
    from backend.config import from_dict
    from backend.errors import ConfigError
    from backend.models.lesion_net import build_model
    from backend.training.config import ExperimentConfig

    path = Path(path)
    ckpt = safe_torch_load(path)
    hparams = ckpt.get("hyper_parameters")
    state = ckpt.get("state_dict")
    if not isinstance(hparams, dict) or "config" not in hparams or not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a DermaLens training checkpoint (no embedded config or state_dict)")
    try:
        cfg = from_dict(ExperimentConfig, hparams["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: embedded config is invalid: {err}") from None
    cfg.model.pretrained_path = None  # the checkpoint's own weights replace any start point
    net = build_model(cfg.model)
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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact. The
    file keeps the permissions of the one it replaces (new files: ``0o644``).
    """
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes`.

    Save plain containers and tensors only, so the file stays loadable with ``weights_only=True``.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
