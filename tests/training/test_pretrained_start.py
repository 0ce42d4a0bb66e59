"""A pretrained start through training: its input normalisation travels into checkpoint and bundle,
its folded BatchNorm is re-estimated once, on a fresh run only."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from backend.errors import DermaLensError
from backend.io.bundle import read_card
from backend.io.checkpoint import load_lesion_checkpoint
from backend.models.registry import create_backbone
from backend.training import run as run_module
from backend.training.run import fit
from backend.workflows.export import export_bundle
from tests.training.test_run import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """A MobileNetV2 state dict in timm layout with BatchNorm folded as TFLite leaves it."""
    torch.manual_seed(0)
    model = create_backbone("mobilenetv2_100", pad_type="same").model
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_mean"):
            value = torch.zeros_like(value)
        elif key.endswith("running_var"):
            value = torch.full_like(value, 1 - 1e-5)
        state[key] = value.contiguous()
    path = tmp_path_factory.mktemp("start") / "mobilenet_folded.safetensors"
    save_file(state, str(path))
    return path


def mobilenet_cfg(dataset, out, weights, **trainer):
    model = {"backbone": "mobilenetv2_100", "backbone_kwargs": {"pad_type": "same"},
             "pretrained_path": str(weights), "bn_reestimate_batches": 2}
    return tiny_cfg(dataset, out, model=model, trainer={"max_epochs": 1, "limit_train_batches": 2, **trainer})


def test_normalisation_and_reestimated_batchnorm_travel_into_checkpoint_and_bundle(dataset, tmp_path,
                                                                                   start_weights, monkeypatch):
    calls = []
    real = run_module.reestimate_start_batchnorm
    monkeypatch.setattr(run_module, "reestimate_start_batchnorm",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    result = fit(mobilenet_cfg(dataset, tmp_path, start_weights), test=False)
    assert calls == [1]
    loaded = load_lesion_checkpoint(result.best_ckpt)
    assert loaded.preprocessing["mean"] == [0.5, 0.5, 0.5] and loaded.preprocessing["std"] == [0.5, 0.5, 0.5]
    assert loaded.config["data"]["mean"] == [0.5, 0.5, 0.5]  # the resolved config says it too
    first_bn = loaded.net.backbone.model.bn1
    assert float(first_bn.running_mean.abs().max()) > 0  # no longer the folded zeros
    bundle = export_bundle(result.best_ckpt, tmp_path / "bundle", csv=dataset).bundle_dir
    assert read_card(bundle)["preprocessing"]["mean"] == [0.5, 0.5, 0.5]

    # A resumed run keeps the checkpoint's statistics instead of measuring again.
    cfg = mobilenet_cfg(dataset, tmp_path, start_weights, max_epochs=2)
    cfg.resume_version = int(result.run_dir.name.split("_")[1])
    fit(cfg, test=False)
    assert calls == [1]


def test_explicit_normalisation_wins_over_the_backbone(dataset, tmp_path, start_weights):
    cfg = mobilenet_cfg(dataset, tmp_path, start_weights)
    cfg.model.bn_reestimate_batches = 0
    cfg.data.mean, cfg.data.std = [0.4, 0.4, 0.4], [0.3, 0.3, 0.3]
    result = fit(cfg, test=False)
    assert load_lesion_checkpoint(result.best_ckpt).preprocessing["mean"] == [0.4, 0.4, 0.4]


def test_resume_never_reads_the_start_weights_again(dataset, tmp_path, start_weights):
    shutil.copytree(dataset.parent, tmp_path / "data")  # this test damages its table at the end
    dataset = tmp_path / "data" / dataset.name
    moved = tmp_path / "start.safetensors"
    moved.write_bytes(start_weights.read_bytes())
    first = fit(mobilenet_cfg(dataset, tmp_path, moved), test=False)
    config_before = (first.run_dir / "config.yaml").read_bytes()
    moved.unlink()  # the start file is gone (another machine, a tidied folder): last.ckpt holds every weight
    version = int(first.run_dir.name.split("_")[1])
    for given in (str(moved), None):  # the old path, or none at all: both resume
        cfg = mobilenet_cfg(dataset, tmp_path, moved, max_epochs=2 if given else 3)
        cfg.model.pretrained_path, cfg.resume_version = given, version
        resumed = fit(cfg, test=False)
        assert resumed.run_dir == first.run_dir
        loaded = load_lesion_checkpoint(resumed.last_ckpt)
        assert loaded.preprocessing["mean"] == [0.5, 0.5, 0.5]  # the run's normalisation, not a default
        assert loaded.config["model"]["pretrained_path"] == str(moved)  # where the run started, as recorded
    assert (first.run_dir / "config.yaml").read_bytes() == config_before
    # A resume refused late (the table went bad since) leaves the run folder as it was: its curves
    # are not set aside before the refusal.
    curves = {p.name: p.read_bytes() for p in first.run_dir.glob("metrics*.csv")}
    dataset.write_text(dataset.read_text() + "no_such_image.png,,,,,\n")
    cfg = mobilenet_cfg(dataset, tmp_path, moved, max_epochs=4)
    cfg.resume_version = version
    with pytest.raises(DermaLensError, match=r"labels.csv, line \d+: expected 11 fields"):
        fit(cfg, test=False)
    assert {p.name: p.read_bytes() for p in first.run_dir.glob("metrics*.csv")} == curves
