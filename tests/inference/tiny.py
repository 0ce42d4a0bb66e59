"""Tiny models and checkpoints for the inference and io tests (made in the test, never downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from backend.config import from_dict, read_yaml
from backend.data.config import DataConfig
from backend.data.metadata import MetadataEncoder
from backend.data.transforms import preprocessing_dict
from backend.inference.predictor import Predictor
from backend.models.config import ModelConfig
from backend.models.lesion_net import build_model
from backend.training.config import ExperimentConfig
from backend.training.run import fit
from tests.conftest import REPO_ROOT, make_lesion_image, write_synthetic_dataset

IMG = 64  # network input side of the tiny models: the CNN's last stage is then 2x2
VIT_KWARGS = {"depth": 1, "embed_dim": 48, "num_heads": 2}


def train_tiny_checkpoint(root: Path, n: int = 48, size: int = IMG, **model: Any) -> tuple[Path, Path]:
    """Train a dermaresnet_se_tiny LesionNet for a few steps on synthetic lesions.

    Returns:
        ``(best.ckpt, labels.csv)``; the run's ``splits.csv`` sits two folders above the checkpoint.
    """

    csv = write_synthetic_dataset(root / "data", n=n, size=size)
    base = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    base["data"].update({"csv": str(csv), "img_dir": str(csv.parent / "images"), "img_size": IMG, "batch_size": 8})
    base["model"].update(model)
    base["trainer"].update({"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2})
    base["log_dir"] = str(root / "runs")
    result = fit(from_dict(ExperimentConfig, base), test=False)
    assert result.best_ckpt is not None and result.best_ckpt.is_file()
    return result.best_ckpt, csv


def tiny_kwargs(backbone: str) -> dict[str, Any]:
    """Small builder arguments for any registered backbone (timm ResNets keep their size)."""
    if backbone.startswith("vit"):
        return dict(VIT_KWARGS)
    if backbone.startswith("dermaresnet"):
        return {"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}
    return {}


def tiny_net(backbone: str = "dermaresnet_se_tiny", use_metadata: bool = True, seed: int = 0, **kwargs: Any):
    """An untrained LesionNet; the thickness head gets random weights so its Grad-CAM is not all zero."""
    import torch


    torch.manual_seed(seed)
    backbone_kwargs = kwargs.pop("backbone_kwargs", None) or (VIT_KWARGS if backbone.startswith("vit") else {})
    net = build_model(ModelConfig(backbone=backbone, backbone_kwargs=backbone_kwargs, meta_hidden=16, fusion_dim=32,
                                  **kwargs), img_size=IMG, meta_dim=MetadataEncoder().dim if use_metadata else 0)
    torch.nn.init.normal_(net.heads.thickness.weight, std=0.5)
    return net.eval()


def tiny_predictor(net: Any = None, **kwargs: Any):
    """A Predictor around ``net`` (default :func:`tiny_net`) with the default eval preprocessing at :data:`IMG` px."""

    net = net if net is not None else tiny_net()
    encoder = MetadataEncoder().to_dict() if net.use_metadata else None
    return Predictor(net, preprocessing_dict(DataConfig(img_size=IMG)), {"mean": 0.3, "std": 0.5}, encoder, **kwargs)


def lesions(n: int, size: int = IMG, seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic lesion images."""
    rng = np.random.default_rng(seed)
    return [make_lesion_image(rng, size) for _ in range(n)]
