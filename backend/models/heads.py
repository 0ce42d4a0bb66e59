"""The parts of LesionNet after the backbone: metadata branch, fusion, task heads, thickness scaling.

LayerNorm rather than BatchNorm is used in the metadata MLP and the fusion layer: it behaves the
same for a batch of one (the dashboard) as for a training batch, needs no synchronisation under
DDP, and keeps every sample's output independent of the other samples in its batch (so metadata
dropout only changes the samples it drops).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from backend.errors import CheckpointError

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray, float)


class MetadataBranch(nn.Module):
    """MLP embedding of the encoded metadata vector: Linear -> LayerNorm -> ReLU -> Dropout.

    Args:
        meta_dim: Length of the input vector (age + missing flag, sex one-hot, site one-hot).
        hidden: Embedding width.
        dropout: Dropout probability on the embedding.
    """

    def __init__(self, meta_dim: int, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.meta_dim = meta_dim
        self.net = nn.Sequential(nn.Linear(meta_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        """``(B, meta_dim)`` -> ``(B, hidden)``."""
        return self.net(meta)


class FusionNeck(nn.Module):
    """Late fusion: the concatenated image (and metadata) features projected to ``fusion_dim``.

    Args:
        in_dim: Width of the concatenated input.
        out_dim: Width of the fused representation.
        dropout: Dropout probability on the output.
    """

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` -> ``(B, out_dim)``."""
        return self.net(x)


class MultiTaskHeads(nn.Module):
    """Diagnosis logits and one normalised thickness value from the fused representation.

    The thickness head starts at zero weight and bias, i.e. it first predicts the training-set
    mean thickness, so the thickness loss does not dominate the early epochs.

    Args:
        in_dim: Width of the fused representation.
        num_classes: Number of diagnoses.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.diagnosis = nn.Linear(in_dim, num_classes)
        self.thickness = nn.Linear(in_dim, 1)
        nn.init.zeros_(self.thickness.weight)
        nn.init.zeros_(self.thickness.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, in_dim)`` -> diagnosis logits ``(B, num_classes)`` and thickness ``(B,)``."""
        return self.diagnosis(x), self.thickness(x).squeeze(-1)


@dataclass
class ThicknessScaler:
    """Breslow thickness <-> the network's normalised units: ``z = (log1p(mm) - mean) / std``.

    The log compresses the long right tail (most melanomas are thin, a few are > 4 mm), so an
    error of 0.2 mm matters more on a 0.5 mm lesion than on a 6 mm one. ``mean``/``std`` are fitted
    on the training split and stored in every checkpoint, so predictions map back to mm the same
    way they were trained. Infinite bounds stay infinite and NaN (unknown) stays NaN, which the
    interval loss relies on.

    Attributes:
        mean: Mean of ``log1p(mm)`` over the training labels.
        std: Standard deviation of ``log1p(mm)`` (> 0).
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.mean) or not np.isfinite(self.std) or self.std <= 0:
            raise CheckpointError(
                f"thickness scaler needs a finite mean and std > 0, got mean={self.mean}, std={self.std}"
            )

    @classmethod
    def fit(cls, lo_mm: Any, hi_mm: Any) -> ThicknessScaler:
        """Fit on thickness intervals (NaN = unknown, ``hi = inf`` = open upper bound).

        Each labelled row contributes one value in log space: the middle of ``[log1p(lo), log1p(hi)]``
        for a closed interval (the exact value when ``lo == hi``), ``log1p(lo)`` when open above.
        With fewer than two labelled rows the identity scaling (mean 0, std 1) is kept.
        """
        lo = np.asarray(lo_mm, dtype=float).reshape(-1)
        hi = np.asarray(hi_mm, dtype=float).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"thickness lo and hi must have the same length, got {lo.shape} and {hi.shape}")
        lo_log = np.log1p(np.clip(np.nan_to_num(lo, nan=0.0), 0.0, None))
        hi_log = np.log1p(np.clip(hi, 0.0, None))
        labelled = ~(np.isnan(lo) & np.isnan(hi))
        values = np.where(np.isfinite(hi_log), (lo_log + hi_log) / 2.0, lo_log)
        values = values[labelled & ~np.isnan(values)]
        if values.size < 2:
            return cls()
        std = float(values.std())
        return cls(mean=float(values.mean()), std=std if std > 1e-6 else 1.0)

    def normalise(self, mm: ArrayLike) -> ArrayLike:
        """Millimetres (tensor, array or float) -> normalised units; negative inputs count as 0."""
        if isinstance(mm, torch.Tensor):
            return (torch.log1p(mm.clamp_min(0.0)) - self.mean) / self.std
        return (np.log1p(np.maximum(mm, 0.0)) - self.mean) / self.std

    def denormalise(self, z: ArrayLike) -> ArrayLike:
        """Normalised units -> millimetres (never negative)."""
        if isinstance(z, torch.Tensor):
            return torch.expm1(z * self.std + self.mean).clamp_min(0.0)
        return np.maximum(np.expm1(np.asarray(z) * self.std + self.mean), 0.0)

    def to_dict(self) -> dict[str, float]:
        """Plain-data form stored in checkpoints and bundles."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThicknessScaler:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            CheckpointError: On missing, unknown or non-numeric entries.
        """
        if not isinstance(data, dict) or set(data) != {"mean", "std"}:
            raise CheckpointError(f"thickness scaler must be a mapping with keys mean and std, got {data!r}")
        try:
            mean, std = float(data["mean"]), float(data["std"])
        except (TypeError, ValueError):
            raise CheckpointError(f"thickness scaler values must be numbers, got {data!r}") from None
        return cls(mean=mean, std=std)
