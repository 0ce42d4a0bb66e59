"""File safety helpers shared by every layer: safe checkpoint loading, atomic writes, file digests.

A leaf module (it imports nothing of the project but :mod:`backend.errors`), so data, models,
training, io, inference and the workflows can all use it without an import cycle.

* :func:`safe_torch_load` reads with ``torch.load(..., weights_only=True)``: tensors and plain
  containers only, so a file carrying a pickled object (code) is refused instead of executed.
* :func:`atomic_write_bytes` and friends write through a temporary file, fsync and ``os.replace``,
  so a reader never sees a half-written file and an interrupted write leaves the old one intact.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from backend.errors import CheckpointError


def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` on the CPU; every failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a .ckpt or .pt file is a zip archive; this "
                              f"file starts with {head!r})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never say that.
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain data, which "
            "could run code when loaded; DermaLens reads only weights (torch.load(weights_only=True))"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            struct.error, zipfile.BadZipFile) as err:
        # Truncated or garbage files surface as any of these from torch's weights-only unpickler.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged, or another kind of file: "
                              f"{err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact. The
    file keeps the permissions of the one it replaces (new files: ``0o644``).
    """
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
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
