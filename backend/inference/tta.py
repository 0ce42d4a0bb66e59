"""Test-time augmentation over the 8 symmetries of the square (flips and 90° rotations).

Dermoscopic lesions have no canonical orientation, which is why training augments with flips and
90° rotations; averaging the predictions over the same dihedral group (D4) at test time removes
the orientation dependence that remains. The variants of a batch are stacked into one tensor so a
single (or a few) forward passes cover them all, instead of eight separate calls.

Layout: :func:`dihedral_batch` puts variant-major copies ``[v0(x), v1(x), ..., v7(x)]`` of a batch
``x`` of ``B`` images one after the other (``8 * B`` rows); :func:`merge_variants` averages rows
``i, B + i, ..., 7B + i`` back into ``B``. Variant 0 is the identity, so ``merge`` of only the
first ``B`` rows is the plain prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: (name, function on ``(..., H, W)`` tensors); the 8 elements of D4, identity first.
DIHEDRAL: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("identity", lambda x: x),
    ("rot90", lambda x: torch.rot90(x, 1, dims=(-2, -1))),
    ("rot180", lambda x: torch.rot90(x, 2, dims=(-2, -1))),
    ("rot270", lambda x: torch.rot90(x, 3, dims=(-2, -1))),
    ("flip", lambda x: torch.flip(x, dims=(-1,))),
    ("flip_rot90", lambda x: torch.rot90(torch.flip(x, dims=(-1,)), 1, dims=(-2, -1))),
    ("flip_rot180", lambda x: torch.rot90(torch.flip(x, dims=(-1,)), 2, dims=(-2, -1))),
    ("flip_rot270", lambda x: torch.rot90(torch.flip(x, dims=(-1,)), 3, dims=(-2, -1))),
)
N_VARIANTS = len(DIHEDRAL)


def dihedral_variants(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 variants of a ``(B, C, H, W)`` batch, identity first (square inputs keep their shape)."""
    return [fn(images) for _, fn in DIHEDRAL]


def dihedral_batch(images: torch.Tensor) -> torch.Tensor:
    """All 8 variants of ``(B, C, H, W)`` stacked variant-major into ``(8 * B, C, H, W)``."""
    return torch.cat(dihedral_variants(images), dim=0)


def repeat_rows(values: torch.Tensor | None, n: int = N_VARIANTS) -> torch.Tensor | None:
    """Per-image side inputs (metadata) repeated to match :func:`dihedral_batch` rows."""
    return None if values is None else values.repeat(n, *([1] * (values.ndim - 1)))


def merge_variants(values: torch.Tensor, n: int = N_VARIANTS) -> torch.Tensor:
    """Average ``(n * B, ...)`` variant-major rows back to ``(B, ...)``."""
    if values.shape[0] % n:
        raise ValueError(f"{values.shape[0]} rows cannot be {n} variants of one batch")
    return values.reshape(n, values.shape[0] // n, *values.shape[1:]).mean(dim=0)


def identity_rows(values: torch.Tensor, n: int = N_VARIANTS) -> torch.Tensor:
    """The rows of variant 0 (the unaugmented images) of a variant-major ``(n * B, ...)`` tensor."""
    return values[: values.shape[0] // n]
