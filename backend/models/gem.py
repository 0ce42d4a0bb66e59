"""Generalised-mean (GeM) pooling with a learnable exponent that cannot leave its valid range.

GeM (Radenović et al., 2018) pools a feature map as ``mean(x**p) ** (1/p)``: ``p = 1`` is average
pooling and ``p -> inf`` tends to max pooling, so a learnt ``p`` lets the network decide how much a
small, intense region (a blue-white veil, a dot cluster) should dominate the lesion descriptor.
timm has no GeM layer, hence this small module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _softplus_inverse(y: float) -> float:
    """The ``raw`` whose ``softplus(raw)`` is ``y`` (``y > 0``)."""
    return y + math.log(-math.expm1(-y))


class GeM(nn.Module):
    """GeM pooling of ``(B, C, H, W)`` maps to ``(B, C)`` vectors.

    ``p`` is parametrised as ``min_p + softplus(raw_p)``: every value of the stored parameter
    ``raw_p`` maps to ``p > min_p``, so no optimiser step can make ``p`` zero or negative (which
    would turn the power into a division by zero or an inverted mean), and, unlike clamping, the
    gradient never vanishes at the boundary. Read the current exponent from :attr:`p`.

    Args:
        p: Initial exponent (3 is the usual start for retrieval and classification).
        eps: Inputs are clamped to at least ``eps`` before the power, so ``0**p`` and the
            ``1/p`` root of 0 have finite gradients (post-ReLU maps are full of zeros).
        min_p: Lower bound of ``p`` (> 0, as ``softplus`` can underflow to 0); 1 keeps GeM between
            average and max pooling.
        learnable: Learn ``p`` (True) or keep it fixed as a buffer.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, min_p: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        if min_p <= 0 or p <= min_p:
            raise ValueError(f"GeM needs min_p > 0 and an initial p > min_p, got p={p}, min_p={min_p}")
        self.eps = eps
        self.min_p = min_p
        raw = torch.full((1,), _softplus_inverse(p - min_p))
        if learnable:
            self.raw_p = nn.Parameter(raw)
        else:
            self.register_buffer("raw_p", raw)

    @property
    def p(self) -> torch.Tensor:
        """The current exponent, a one-element tensor always greater than ``min_p``."""
        return self.min_p + F.softplus(self.raw_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the spatial dimensions; computed in float32 so ``x**p`` cannot overflow under fp16 AMP."""
        dtype = x.dtype
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
        return pooled.to(dtype)

    def extra_repr(self) -> str:
        """Show the current ``p`` when the module is printed."""
        return f"p={self.p.item():.4f}, eps={self.eps}, min_p={self.min_p}"
