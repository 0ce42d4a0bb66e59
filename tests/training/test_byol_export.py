"""BYOL backbone export: keys and metadata, export on demand, loading into the supervised model, the CLIs."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.config import from_dict, read_yaml
from backend.errors import CheckpointError
from backend.files import safe_torch_load
from backend.io.checkpoint import load_lesion_checkpoint
from backend.models.config import ModelConfig
from backend.models.lesion_net import build_model
from backend.models.registry import create_backbone, load_backbone_weights
from backend.training.byol_run import backbone_from_export, read_export
from scripts.pretrain_byol import main as byol_main
from scripts.pretrain_byol import parse_config
from scripts.train import main as train_main
from tests.conftest import REPO_ROOT, make_lesion_image, write_synthetic_dataset

BYOL_FLAGS = ["--img_size", "32", "--batch_size", "4", "--num_workers", "0", "--max_epochs", "1",
              "--accelerator", "cpu", "--devices", "1", "model.proj_hidden_dim=32", "model.proj_dim=16",
              "model.pred_hidden_dim=32", "monitor.histogram_every_n_steps=0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def byol_run(tmp_path_factory) -> Path:
    """A one-epoch BYOL run through the CLI on 12 synthetic images; returns its run folder."""
    root = tmp_path_factory.mktemp("byol")
    rng = np.random.default_rng(0)
    (root / "images" / "nested").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(make_lesion_image(rng, 48)).save(root / "images" / ("nested" if i % 2 else "") / f"u{i}.png")
    code = byol_main(["--data_dirs", str(root / "images"), "--model_cfg",
                      str(REPO_ROOT / "cfgs" / "model" / "dermaresnet_se_tiny.yaml"), "--log_dir", str(root / "runs"),
                      "--experiment_name", "tiny", *BYOL_FLAGS])
    assert code == 0
    return root / "runs" / "tiny" / "version_0"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("labelled"), n=24, size=40)


def test_export_has_the_backbone_keys_and_metadata(byol_run):
    state, meta = read_export(byol_run / "backbone.safetensors")
    assert meta["backbone"] == "dermaresnet_se_tiny" and meta["img_size"] == 32 and meta["source"] == "byol"
    assert meta["preprocessing"]["img_size"] == 32 and meta["preprocessing"]["color_constancy"] is True
    assert meta["global_step"] == 3 and meta["config"]["model"]["proj_dim"] == 16
    reference = create_backbone(meta["backbone"], **meta["backbone_kwargs"]).state_dict()
    assert set(state) == set(reference)  # the Backbone's own keys, nothing else (no heads, no target)
    online = safe_torch_load(byol_run / "ckpts" / "last.ckpt")["state_dict"]
    for key, value in state.items():
        assert torch.equal(value, online[f"online_backbone.{key}"]), key
    sidecar = json.loads((byol_run / "backbone.json").read_text())
    assert sidecar["backbone"] == meta["backbone"] and sidecar["backbone_kwargs"] == meta["backbone_kwargs"]


def test_export_on_demand_from_a_checkpoint(byol_run, tmp_path, capsys):
    out = tmp_path / "again.safetensors"
    assert byol_main(["--export_only", str(byol_run / "ckpts" / "last.ckpt"), "--export_out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    again, meta = read_export(out)
    first, _ = read_export(byol_run / "backbone.safetensors")
    assert meta["checkpoint"].endswith("last.ckpt") and again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)
    assert byol_main(["--export_only", str(byol_run / "config.yaml")]) == 2
    assert "error:" in capsys.readouterr().err


def test_supervised_model_loads_the_export_and_the_online_half_of_a_checkpoint(byol_run, caplog):
    export = byol_run / "backbone.safetensors"
    state, _ = read_export(export)
    backbone, _ = backbone_from_export(export)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items())
    with caplog.at_level(logging.INFO, logger="backend.models.registry"):
        net = build_model(from_dict(ModelConfig, {"backbone": "dermaresnet_se_tiny", "pretrained_path": str(export)}),
                          img_size=32)
    assert f"{len(state)} matched, 0 missing" in caplog.text
    assert all(torch.equal(net.backbone.state_dict()[k], v) for k, v in state.items())
    # A raw Lightning checkpoint also works: the online backbone wins over the target's equal-sized copy.
    fresh = create_backbone("dermaresnet_se_tiny")
    report = load_backbone_weights(fresh, byol_run / "ckpts" / "last.ckpt")
    assert len(report.matched) == len(state) and not report.missing
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(CheckpointError, match="none of its .* tensors fits backbone"):
        build_model(from_dict(ModelConfig, {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 1},
                                            "pretrained_path": str(export)}), img_size=32)


def test_train_cli_starts_from_the_export(byol_run, labelled, tmp_path, capsys, caplog):
    export = byol_run / "backbone.safetensors"
    common = ["--config", str(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml"), "--csv", str(labelled),
              "--img_size", "32", "--batch_size", "4", "--max_epochs", "1", "--no_test"]
    with caplog.at_level(logging.INFO, logger="backend.models.registry"):
        code = train_main([*common, "--pretrain_ckpt", str(export), "--log_dir", str(tmp_path / "ok")])
    assert code == 0, capsys.readouterr().err
    state, _ = read_export(export)
    assert f"{len(state)} matched, 0 missing" in caplog.text
    # cpu_tiny freezes the backbone for its first epoch: the trained model still holds the BYOL weights.
    loaded = load_lesion_checkpoint(tmp_path / "ok" / "cpu_tiny" / "version_0" / "ckpts" / "last.ckpt")
    assert all(torch.equal(loaded.net.backbone.state_dict()[k], v) for k, v in state.items())
    saved = read_yaml(tmp_path / "ok" / "cpu_tiny" / "version_0" / "config.yaml")
    assert saved["model"]["pretrained_path"] == str(export)
    assert "pretrained with" not in caplog.text  # same preprocessing as the pretraining: nothing to say
    # A fine-tune that sees other inputs than the pretraining did is allowed, and said.
    with caplog.at_level(logging.WARNING, logger="backend.training.run"):
        code = train_main([*common, "--pretrain_ckpt", str(export), "--log_dir", str(tmp_path / "other"),
                           "data.color_constancy=false", "trainer.fast_dev_run=true"])
    assert code == 0
    assert "color_constancy: pretrained with True, fine-tuned with False" in caplog.text

    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    code = train_main([*common, "--pretrain_ckpt", str(unrelated), "--log_dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "none of its 1 tensors fits backbone" in err


#: The BYOL CLI's flags as they were spelled before they matched scripts/train.py's (still accepted).
OLD_BYOL_ARGV = [
    "--data-dirs", "a", "b", "--img-size", "48", "--batch-size", "6", "--max-epochs", "3", "--num-workers", "1",
    "--devices", "2", "--strategy", "ddp", "--num-nodes", "1", "--precision", "bf16-mixed", "--lr", "0.01",
    "--weight-decay", "0.02", "--base-momentum", "0.99", "--optimizer", "sgd", "--log-dir", "LOG",
    "--experiment-name", "x", "--gradient-clip-val", "3", "--seed", "7", "--accumulate-grad-batches", "2",
    "--model-cfg", str(REPO_ROOT / "cfgs" / "model" / "dermaresnet_se_tiny.yaml"), "--resume",
    "optim.final_momentum=0.999",
]


def check_byol_flags(cfg, args, log_dir):
    assert cfg.data.dirs == ["a", "b"] and (cfg.data.img_size, cfg.data.batch_size, cfg.data.num_workers) == (48, 6, 1)
    assert cfg.model.backbone == "dermaresnet_se_tiny"
    assert (cfg.trainer.max_epochs, cfg.trainer.lightning_devices(), cfg.trainer.strategy) == (3, 2, "ddp")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 3
    assert cfg.trainer.accumulate_grad_batches == 2 and cfg.seed == 7 and cfg.resume
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay) == ("sgd", 0.01, 0.02)
    assert (cfg.optim.base_momentum, cfg.optim.final_momentum) == (0.99, 0.999)
    assert cfg.log_dir == log_dir and cfg.experiment_name == "x" and not args.export_only


def test_byol_cli_old_flag_spellings_still_work_with_a_deprecation_warning(tmp_path):
    argv = [str(tmp_path) if a == "LOG" else a for a in OLD_BYOL_ARGV]
    with pytest.warns(DeprecationWarning) as seen:
        cfg, args = parse_config(argv)
    check_byol_flags(cfg, args, str(tmp_path))
    messages = [str(w.message) for w in seen]
    assert "command-line flag '--model-cfg' is deprecated: use '--model_cfg'" in messages
    assert "command-line flag '--max-epochs' is deprecated: use '--max_epochs'" in messages
    assert len(messages) == sum(a.startswith("--") and "-" in a[2:] for a in argv)  # one per old flag
    with pytest.warns(DeprecationWarning) as seen:  # the supervised CLI's old spellings mean the same here
        cfg, _ = parse_config(["--epochs", "4", "--output_dir", str(tmp_path / "o")])
    assert cfg.trainer.max_epochs == 4 and cfg.log_dir == str(tmp_path / "o")
    assert [str(w.message) for w in seen] == ["command-line flag '--epochs' is deprecated: use '--max_epochs'",
                                              "command-line flag '--output_dir' is deprecated: use '--log_dir'"]


def test_byol_cli_flags_and_bad_input(tmp_path, capsys):
    argv = [str(tmp_path) if a == "LOG" else a for a in OLD_BYOL_ARGV]
    argv = ["--" + a[2:].replace("-", "_") if a.startswith("--") else a for a in argv]  # today's spellings: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        cfg, args = parse_config(argv)
    check_byol_flags(cfg, args, str(tmp_path))
    default, _ = parse_config([])
    assert default.trainer.precision == "32" and default.optim.base_momentum == 0.996
    assert byol_main(["--data_dirs", str(tmp_path / "nowhere"), "--log_dir", str(tmp_path)]) == 2
    assert "error: image folder not found" in capsys.readouterr().err
    assert byol_main(["optim.base_momentumm=0.9"]) == 2
    assert "unknown config key 'optim.base_momentumm'" in capsys.readouterr().err
    assert byol_main(["--accelerator", "cpu", "trainer.sync_batchnorm=true"]) == 2
    assert "sync_batchnorm needs GPUs" in capsys.readouterr().err
    for name in ("cpu_small", "default"):
        cfg, _ = parse_config(["--config", str(REPO_ROOT / "cfgs" / "byol" / f"{name}.yaml")])
        assert cfg.trainer.precision == "32" and cfg.optim.final_momentum == 1.0


def test_byol_overrides_after_the_image_folders_are_overrides(tmp_path):
    cfg, args = parse_config(["--data_dirs", str(tmp_path / "a"), str(tmp_path / "b"), "model.proj_dim=16",
                              "--max_epochs", "3", "optim.lr=0.01"])
    assert cfg.data.dirs == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert (cfg.model.proj_dim, cfg.trainer.max_epochs, cfg.optim.lr) == (16, 3, 0.01)
    assert sorted(args.overrides) == ["model.proj_dim=16", "optim.lr=0.01"]
    # The last override of a key wins, whether or not a list flag swallowed it first.
    cfg, args = parse_config(["--data_dirs", str(tmp_path / "a"), "optim.lr=0.1", "--max_epochs", "3", "optim.lr=0.2"])
    assert cfg.optim.lr == 0.2 and args.overrides == ["optim.lr=0.1", "optim.lr=0.2"]
