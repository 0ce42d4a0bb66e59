"""Fixtures of the reliability tests: untrained tiny model bundles and the app's served files.

The bad-input tests check how files are *handled* (refused by name, or decoded correctly), not what
the model says about them, so the predictor can be an untrained network: exporting one as a bundle
takes well under a second, where training the tiny models of ``tests/app`` takes half a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import from_dict, to_dict
from backend.data.schema import DIAGNOSES
from backend.data.transforms import preprocessing_dict
from backend.io.bundle import save_bundle
from backend.io.checkpoint import LoadedModel
from backend.models.lesion_net import build_experiment_model
from backend.training.config import ExperimentConfig

BUNDLE_NAME = "untrained-tiny"
IMG = 64


def build_untrained_bundle(models_dir: Path) -> Path:
    """Write an untrained image-only ``dermaresnet_se_tiny`` bundle into ``models_dir``; returns its folder."""
    import torch


    cfg = from_dict(ExperimentConfig, {
        "data": {"img_size": IMG, "use_metadata": False},
        "model": {"backbone": "dermaresnet_se_tiny", "meta_hidden": 16, "fusion_dim": 32},
    })
    torch.manual_seed(0)
    net = build_experiment_model(cfg.model, cfg.data).eval()
    model = LoadedModel(net=net, config=to_dict(cfg), classes=list(DIAGNOSES),
                        thickness_scaler={"mean": 0.3, "std": 0.5}, metadata_encoder=None,
                        preprocessing=preprocessing_dict(cfg.data), source=models_dir / "untrained.ckpt")
    return save_bundle(models_dir / BUNDLE_NAME, model, name="Untrained tiny", version="test-1")


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny bundle folder (its parent is a models folder holding only it), once per session."""
    return build_untrained_bundle(tmp_path_factory.mktemp("reliability_models"))


@pytest.fixture
def app_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An untrained tiny bundle (exported like a trained one) as the app's only and default model."""
    from tests.reliability.fault_tools import untrained_bundle

    models = tmp_path_factory.mktemp("app_models")
    bundle = untrained_bundle(models)
    monkeypatch.setenv("DERMALENS_MODELS_DIR", str(models))
    monkeypatch.setenv("DERMALENS_MODEL", str(bundle))
    return bundle
