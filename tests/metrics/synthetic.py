"""Synthetic diagnosis splits shared by the metric tests."""

from __future__ import annotations

import numpy as np
import torch

from backend.data.schema import DIAGNOSES
from backend.metrics.collection import build_classification_metrics

C = len(DIAGNOSES)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic(rng: np.random.Generator, n: int = 240, classes: tuple[int, ...] = tuple(range(C))):
    """Labels from ``classes`` and informative-but-noisy probabilities."""
    y = rng.choice(classes, size=n)
    logits = rng.normal(0, 1.0, (n, C))
    logits[np.arange(n), y] += 1.5
    return y, softmax(logits)


def run_collection(y: np.ndarray, probs: np.ndarray, chunks: int = 3) -> dict[str, torch.Tensor]:
    metrics = build_classification_metrics(C)
    for yc, pc in zip(np.array_split(y, chunks), np.array_split(probs, chunks), strict=True):
        metrics.update(torch.tensor(pc, dtype=torch.float32), torch.tensor(yc))
    return metrics.compute()
