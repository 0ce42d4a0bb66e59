"""ONNX export of a LesionNet with its calibration and thickness scaling folded in.

The exported graph takes the *preprocessed* image batch (the eval transform's output, ``(B, 3, S,
S)`` float32) and, for fusion models, the encoded metadata ``(B, meta_dim)`` plus a per-row
``metadata_present`` flag (1 = use the metadata branch, 0 = the learned "no metadata" embedding,
exactly what ``LesionNet.forward(x, None)`` does). Outputs::

    probabilities  (B, 8)  softmax(logits / temperature), DIAGNOSES order
    logits         (B, 8)  raw diagnosis logits
    thickness_mm   (B,)    Breslow estimate in mm
    features       (B, D)  pooled backbone features (for the out-of-distribution check)

The batch axis is dynamic. The TorchScript-based exporter is used (``dynamo=False``): it needs only
the ``onnx`` package, and the tracing it does is exact for these networks (no data-dependent
control flow once metadata presence is a tensor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backend.errors import CheckpointError
from backend.files import atomic_write_bytes

OUTPUT_NAMES: tuple[str, ...] = ("probabilities", "logits", "thickness_mm", "features")
DEFAULT_OPSET = 17


class ExportWrapper(nn.Module):
    """LesionNet inference with temperature and thickness de-normalisation, metadata presence as a tensor.

    Args:
        net: The LesionNet (shared, not copied).
        temperature: Calibration temperature.
        thickness_mean: ``ThicknessScaler.mean``.
        thickness_std: ``ThicknessScaler.std``.
    """

    def __init__(self, net: nn.Module, temperature: float = 1.0, thickness_mean: float = 0.0,
                 thickness_std: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)
        self.thickness_mean = float(thickness_mean)
        self.thickness_std = float(thickness_std)

    def forward(self, image: torch.Tensor, metadata: torch.Tensor | None = None,
                metadata_present: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """See the module docstring for inputs and outputs."""
        net = self.net
        features = net.backbone(image)
        parts = [features]
        if net.meta_branch is not None:
            missing = net.meta_missing.unsqueeze(0).expand(features.shape[0], -1)
            emb = net.meta_branch(metadata)
            emb = torch.where(metadata_present.unsqueeze(1) > 0.5, emb, missing)
            parts.append(emb.to(features.dtype))
        logits, thickness = net.heads(net.fusion(torch.cat(parts, dim=1)))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        # exp(z) - 1 rather than expm1, which ONNX lacks; the difference is far below float32 resolution in mm.
        thickness_mm = (torch.exp(thickness * self.thickness_std + self.thickness_mean) - 1.0).clamp_min(0.0)
        return probs, logits, thickness_mm, features


def export_onnx(
    net: nn.Module,
    path: str | Path,
    img_size: int,
    temperature: float = 1.0,
    thickness_scaler: dict[str, float] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``net`` to an ONNX file (written atomically).

    Args:
        net: A LesionNet (put in eval mode; its memory format is left as is).
        path: Output ``.onnx`` file.
        img_size: Input side of the example batch (the graph keeps it fixed; the batch is dynamic).
        temperature: Calibration temperature folded into ``probabilities``.
        thickness_scaler: ``ThicknessScaler.to_dict()`` folded into ``thickness_mm``.
        opset: ONNX opset version.

    Raises:
        CheckpointError: When the exporter fails (message carries its reason).
    """
    import io
    import warnings

    scaler = thickness_scaler or {"mean": 0.0, "std": 1.0}
    wrapper = ExportWrapper(net, temperature, scaler["mean"], scaler["std"]).eval()
    image = torch.zeros(2, 3, img_size, img_size)
    names = ["image"]
    args: tuple[Any, ...] = (image,)
    axes: dict[str, dict[int, str]] = {"image": {0: "batch"}}
    if net.meta_branch is not None:
        args = (image, torch.zeros(2, net.meta_dim), torch.ones(2))
        names += ["metadata", "metadata_present"]
        axes.update({"metadata": {0: "batch"}, "metadata_present": {0: "batch"}})
    axes.update({name: {0: "batch"} for name in OUTPUT_NAMES})
    buffer = io.BytesIO()
    was_training = net.training
    net.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the parity test is the check
            torch.onnx.export(
                wrapper, args, buffer, input_names=names, output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
    except Exception as err:  # the exporter raises many unrelated types
        raise CheckpointError(f"ONNX export failed: {type(err).__name__}: {err}") from err
    finally:
        net.train(was_training)
    return atomic_write_bytes(path, buffer.getvalue())


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for an exported model.

    Raises:
        CheckpointError: onnxruntime is missing or the file cannot be loaded.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("onnxruntime is not installed (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    # Idle intra-op threads otherwise spin for a while after each run and take the CPU from the
    # Grad-CAM (eager PyTorch) that follows a prediction: ~2x slower predict-then-explain on 2 cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise CheckpointError(f"{path}: cannot load ONNX model: {err}") from None


def run_onnx(session: Any, images: np.ndarray, metadata: np.ndarray | None = None,
             present: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run an exported model; ``metadata=None`` on a fusion model means "no metadata" for every row."""
    feeds: dict[str, np.ndarray] = {"image": np.ascontiguousarray(images, dtype=np.float32)}
    inputs = {i.name for i in session.get_inputs()}
    if "metadata" in inputs:
        n = images.shape[0]
        dim = session.get_inputs()[1].shape[1]
        if metadata is None:
            metadata = np.zeros((n, int(dim)), dtype=np.float32)
            present = np.zeros(n, dtype=np.float32)
        elif present is None:
            present = np.ones(n, dtype=np.float32)
        feeds["metadata"] = np.ascontiguousarray(metadata, dtype=np.float32)
        feeds["metadata_present"] = np.ascontiguousarray(present, dtype=np.float32)
    outputs = session.run(list(OUTPUT_NAMES), feeds)
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))
