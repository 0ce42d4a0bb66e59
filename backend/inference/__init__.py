"""Inference: the ``Predictor`` API, risk index, Grad-CAM, quality gate and test-time augmentation.

Importing this package is cheap: the names below are loaded on first access, so the app's first
paint and the CLIs' ``--help`` do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Predictor": "backend.inference.predictor",
    "Prediction": "backend.inference.predictor",
    "RawOutputs": "backend.inference.predictor",
    "OUTPUT_COLUMNS": "backend.inference.predictor",
    "RiskConfig": "backend.inference.risk",
    "risk_index": "backend.inference.risk",
    "traffic_light": "backend.inference.risk",
    "thickness_band": "backend.inference.risk",
    "QualityConfig": "backend.inference.quality",
    "QualityFlag": "backend.inference.quality",
    "FeatureStats": "backend.inference.quality",
    "image_flags": "backend.inference.quality",
    "LesionCAM": "backend.inference.explain",
    "ClassTarget": "backend.inference.explain",
    "ThicknessTarget": "backend.inference.explain",
    "overlay": "backend.inference.explain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'backend.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
