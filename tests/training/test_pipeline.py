"""The default-model pipeline on synthetic data: stages, records, resume-by-skipping, card contents."""

from __future__ import annotations

import json

import pytest

from backend.config import from_dict, read_yaml
from backend.errors import ConfigError
from backend.training.pipeline import PipelineConfig, load_pipeline_config, run_pipeline
from scripts.default_model import main as pipeline_main
from tests.conftest import REPO_ROOT, write_synthetic_dataset


def tiny_pipeline(tmp_path, stages):
    csv = write_synthetic_dataset(tmp_path / "data", n=48, size=40)
    supervised = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    supervised["data"].update({"csv": str(csv), "img_size": 32, "batch_size": 4})
    supervised["model"]["img_size"] = 32
    supervised["trainer"]["epochs"] = 1
    supervised["output_dir"] = str(tmp_path / "runs")
    return from_dict(PipelineConfig, {
        "name": "tiny", "version": "9", "bundle_dir": str(tmp_path / "bundle"), "work_dir": str(tmp_path / "work"),
        "stages": stages, "supervised": supervised, "n_boot": 20, "card_markdown": str(tmp_path / "card.md"),
    })


def test_default_config_is_valid():
    cfg = load_pipeline_config(REPO_ROOT / "cfgs" / "default.yaml")
    assert cfg.bundle_dir == "assets/models/default" and set(cfg.stages) <= {"byol", "train", "export", "card"}
    assert cfg.byol is not None and cfg.supervised["data"]["csv"].endswith("labels.csv")


def test_stages_run_record_and_skip(tmp_path):
    from backend.inference.predictor import Predictor

    cfg = tiny_pipeline(tmp_path, ["train", "export", "card"])
    records = run_pipeline(cfg)
    assert records["byol"] is None and records["train"]["best_ckpt"].endswith("best.ckpt")
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["name"] == "tiny" and card["version"] == "9"
    metrics = card["test_metrics"]
    assert {"balanced_accuracy", "auroc_malignant", "ece", "f1/MEL", "thickness_band_accuracy"} <= set(metrics)
    assert card["test_split"]["rows"] > 0 and card["test_subgroups"]
    text = (tmp_path / "card.md").read_text()
    assert "Test-split metrics" in text and "| balanced_accuracy |" in text
    assert (tmp_path / "bundle" / "MODEL_CARD.md").read_text() == text
    assert Predictor.from_checkpoint(tmp_path / "bundle").card["name"] == "tiny"
    # A second run skips every finished stage: no new training run, same records.
    again = run_pipeline(cfg)
    assert again["train"]["best_ckpt"] == records["train"]["best_ckpt"]
    assert again["card"]["test_rows"] == records["card"]["test_rows"]
    assert sorted(p.name for p in (tmp_path / "runs" / "cpu_tiny").iterdir()) == ["version_0"]


def test_unknown_stage_and_missing_train_are_clear_errors(tmp_path, capsys):
    cfg = tiny_pipeline(tmp_path, ["train"])
    with pytest.raises(ConfigError, match="unknown stages"):
        run_pipeline(cfg, stages=["distill"])
    with pytest.raises(ConfigError, match="needs a finished train stage"):
        run_pipeline(cfg, stages=["export"])
    with pytest.raises(ConfigError, match="stages: unknown"):
        from_dict(PipelineConfig, {"stages": ["nope"]})
    assert pipeline_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
