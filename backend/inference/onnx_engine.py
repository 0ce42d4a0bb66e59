"""ONNX Runtime as the predictor's forward pass, where it is faster than eager PyTorch.

A bundle exported with ``--onnx`` carries ``model.onnx``: the same LesionNet with the bundle's
calibration temperature and thickness de-normalisation built in (``backend.io.onnx``). On this
project's 2-core CPU, ONNX Runtime runs it about 1.7x faster than eager PyTorch at batch 1 (more on a busy machine)
(``benchmarks/inference.py`` prints both, with the largest difference between their outputs), so
:class:`~backend.inference.predictor.Predictor` predicts through it when it can:

* only for a bundle whose card records the ONNX file and its SHA-256, which must match (a swapped
  file is refused like swapped weights);
* only for the plain forward pass at the temperature baked into the file: test-time augmentation,
  another temperature and Grad-CAM (which needs gradients) stay in PyTorch;
* only when onnxruntime is installed; otherwise PyTorch, silently, with identical results to 1e-4.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.errors import CheckpointError
from backend.files import sha256_file
from backend.io.bundle import ONNX_FILE
from backend.io.onnx import onnx_session, run_onnx

log = logging.getLogger(__name__)

#: Forward-pass engines a predictor can be asked for.
ENGINES = ("auto", "torch", "onnxruntime")


@dataclass
class OnnxEngine:
    """An ONNX Runtime session of a bundle's network and the temperature baked into it.

    Attributes:
        session: The ``onnxruntime.InferenceSession``.
        temperature: Calibration temperature the file applies to its probabilities.
        path: The ONNX file.
    """

    session: Any
    temperature: float
    path: Path

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, card: dict[str, Any], temperature: float) -> OnnxEngine:
        """Open the bundle's ``model.onnx`` after checking it against the card's SHA-256.

        Raises:
            CheckpointError: No ONNX file recorded or present, a hash mismatch, or onnxruntime missing.
        """
        info = card.get("onnx") or {}
        path = Path(bundle_dir) / str(info.get("file") or ONNX_FILE)
        if not info or not path.is_file():
            raise CheckpointError(f"{bundle_dir}: the bundle has no ONNX model (export it with --onnx)")
        digest = sha256_file(path)
        if digest != info.get("sha256"):
            raise CheckpointError(f"{path}: SHA-256 {digest[:12]}... differs from the card's; the file was changed")
        return cls(onnx_session(path, threads=torch.get_num_threads()), float(temperature), path)

    def __call__(self, x: torch.Tensor, meta: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """``(probs, logits, thickness_mm, features)`` of a preprocessed batch, as the eager path returns them."""
        images = x.detach().contiguous().numpy()
        out = run_onnx(self.session, images, None if meta is None else np.asarray(meta, dtype=np.float32))
        return (out["probabilities"].astype(np.float64), out["logits"], out["thickness_mm"].reshape(-1),
                out["features"])


def open_engine(engine: str, bundle_dir: str | Path, card: dict[str, Any], temperature: float) -> OnnxEngine | None:
    """The ONNX engine a predictor should use, or None for eager PyTorch.

    ``auto`` uses ONNX Runtime when the bundle has a valid ONNX file and onnxruntime is installed;
    ``onnxruntime`` insists (errors are raised); ``torch`` never uses it.

    Raises:
        CheckpointError: ``engine`` is ``onnxruntime`` and the engine cannot be opened, or a
            recorded ONNX file does not match its hash (whatever the engine).
        ValueError: An unknown engine name.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "torch":
        return None
    try:
        return OnnxEngine.from_bundle(bundle_dir, card, temperature)
    except CheckpointError as err:
        if engine == "onnxruntime" or "differs from the card" in str(err):
            raise
        log.info("predicting with eager PyTorch: %s", err)
        return None
