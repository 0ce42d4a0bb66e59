"""End-to-end supervised training on synthetic data: every backbone, resume, DDP, checkpoint contents."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from backend.config import from_dict, read_yaml
from backend.data.datamodule import class_weights
from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.metadata import MetadataEncoder
from backend.data.splits import read_splits
from backend.errors import ConfigError
from backend.files import safe_torch_load
from backend.io.checkpoint import load_lesion_checkpoint
from backend.training import run as run_module
from backend.training.config import ExperimentConfig
from backend.training.run import fit
from backend.training.supervised import LesionModule
from scripts.train import main as train_main
from scripts.train import parse_config
from tests.conftest import REPO_ROOT, nan_loss_at_step
from tests.models.test_lesion_net import tiny_net

TINY_MODELS = {
    "dermaresnet_se_tiny": {"backbone": "dermaresnet_se_tiny"},
    "dermaresnet_se_18": {"backbone": "dermaresnet_se_18", "backbone_kwargs": {"widths": [8, 16, 24, 32]}},
    "resnet50": {"backbone": "resnet50"},
    "vit_small_patch16_224": {"backbone": "vit_small_patch16_224",
                              "backbone_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}},
    "vit_base_patch16_224": {"backbone": "vit_base_patch16_224",
                             "backbone_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}},
}


def tiny_cfg(csv: Path, out: Path, **sections) -> ExperimentConfig:
    base = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    base["data"].update({"csv": str(csv), "img_dir": str(csv.parent / "images"), "img_size": 32, "batch_size": 4})
    base["log_dir"] = str(out)
    for key, value in sections.items():
        base.setdefault(key, {})
        if isinstance(value, dict):
            base[key].update(value)
        else:
            base[key] = value
    return from_dict(ExperimentConfig, base)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_fast_dev_run_every_backbone(dataset, tmp_path, name):
    cfg = tiny_cfg(dataset, tmp_path, model=TINY_MODELS[name], trainer={"fast_dev_run": True})
    result = fit(cfg, test=False)
    assert result.run_dir.is_dir() and (result.run_dir / "config.yaml").is_file()
    assert (result.run_dir / "splits.csv").is_file()
    for key in ("train/loss", "val/loss", "val/balanced_accuracy"):
        assert torch.isfinite(torch.tensor(result.metrics[key])), key


def test_run_layout_checkpoint_rebuilds_model(dataset, tmp_path):
    cfg = tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1})
    result = fit(cfg, test=True)
    run = result.run_dir
    assert run == tmp_path / "cpu_tiny" / "version_0"
    assert (run / "ckpts" / "best.ckpt").is_file() and (run / "ckpts" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*")) and (run / "metrics.csv").is_file()
    assert "test/balanced_accuracy" in result.metrics
    loaded = load_lesion_checkpoint(run / "ckpts" / "best.ckpt")
    assert loaded.classes == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert loaded.preprocessing["img_size"] == 32 and loaded.metadata_encoder is not None
    assert loaded.config["data"]["use_metadata"] is True and "meta_dim" not in loaded.config["model"]
    assert loaded.net.meta_dim == MetadataEncoder.from_dict(loaded.metadata_encoder).dim == 15
    out = loaded.net(torch.zeros(2, 3, 32, 32))
    assert out.diagnosis_logits.shape == (2, 8) and out.thickness.shape == (2,)
    # A second run takes the next version.
    assert fit(tiny_cfg(dataset, tmp_path, trainer={"fast_dev_run": True}), test=False).run_dir.name == "version_1"


def test_resume_continues_to_the_same_global_step(dataset, tmp_path):
    full = fit(tiny_cfg(dataset, tmp_path / "full", trainer={"max_epochs": 2}), test=False)
    first = fit(tiny_cfg(dataset, tmp_path / "split", trainer={"max_epochs": 1}), test=False)
    step_after_one = safe_torch_load(first.last_ckpt)["global_step"]
    resumed = fit(tiny_cfg(dataset, tmp_path / "split", trainer={"max_epochs": 2}, resume_version=0), test=False)
    assert resumed.run_dir == first.run_dir
    full_ckpt, resumed_ckpt = safe_torch_load(full.last_ckpt), safe_torch_load(resumed.last_ckpt)
    assert resumed_ckpt["epoch"] == full_ckpt["epoch"] == 1
    assert resumed_ckpt["global_step"] == full_ckpt["global_step"] == 2 * step_after_one
    # Resumed with more epochs, the run follows the 2-epoch schedule (not the saved 1-epoch one).
    full_lr, resumed_lr = full_ckpt["lr_schedulers"][0], resumed_ckpt["lr_schedulers"][0]
    assert resumed_lr["lr_lambdas"][0]["total_steps"] == full_lr["lr_lambdas"][0]["total_steps"] == 2 * step_after_one
    assert resumed_lr["_last_lr"] == pytest.approx(full_lr["_last_lr"])
    assert abs(resumed.metrics["val/loss"] - full.metrics["val/loss"]) < 0.5


def test_resume_keeps_the_runs_split_and_files_even_when_the_table_changed(dataset, tmp_path):
    first = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1}), test=False)
    split_before = (first.run_dir / "splits.csv").read_bytes()
    config_before = (first.run_dir / "config.yaml").read_bytes()
    # The table loses rows (say their images went missing): a fresh split of it would move images.
    table = pd.read_csv(dataset)
    smaller = dataset.parent / "smaller.csv"
    table.iloc[6:].to_csv(smaller, index=False)
    fresh = fit(tiny_cfg(smaller, tmp_path / "fresh", trainer={"fast_dev_run": True}), test=False)
    moved = pd.read_csv(first.run_dir / "splits.csv").merge(pd.read_csv(fresh.run_dir / "splits.csv"), on="image_id",
                                                           suffixes=("_run", "_fresh"))
    assert (moved["split_run"] != moved["split_fresh"]).any()  # what a recomputed split would have done
    seen = []
    original = run_module.LesionDataModule
    run_module.LesionDataModule = lambda data_cfg: seen.append(data_cfg.split_csv) or original(data_cfg)
    try:
        resumed = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 2}, resume_version=0), test=False)
    finally:
        run_module.LesionDataModule = original
    assert seen == [str(first.run_dir / "splits.csv")]  # the run's own split, not a recomputed one
    assert resumed.run_dir == first.run_dir
    assert (first.run_dir / "splits.csv").read_bytes() == split_before
    assert (first.run_dir / "config.yaml").read_bytes() == config_before


def test_resume_with_another_model_or_table_is_refused_before_anything_is_written(dataset, tmp_path):
    first = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1}), test=False)
    files = {p: p.read_bytes() for p in (first.run_dir / "config.yaml", first.run_dir / "splits.csv")}
    with pytest.raises(ConfigError, match=r"model.backbone: run has 'dermaresnet_se_tiny', now 'resnet50'"):
        fit(tiny_cfg(dataset, tmp_path, model={"backbone": "resnet50"}, resume_version=0), test=False)
    with pytest.raises(ConfigError, match=r"data.img_size: run has 32, now 48"):
        fit(tiny_cfg(dataset, tmp_path, data={"img_size": 48}, resume_version=0), test=False)
    assert all(path.read_bytes() == data for path, data in files.items())


def test_a_nan_loss_stops_training_with_finite_weights_and_a_dump(dataset, tmp_path, monkeypatch):
    nan_loss_at_step(monkeypatch, LesionModule, 2)
    result = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 3}), test=False)
    last = safe_torch_load(result.last_ckpt)
    assert last["global_step"] <= 3  # stopped at the NaN, not after three epochs
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert list((result.run_dir / "dumps").glob("nonfinite_step*.pt"))
    with pytest.raises(ConfigError, match="trainer.on_nonfinite"):
        tiny_cfg(dataset, tmp_path, trainer={"on_nonfinite": "ignore"})


def test_balanced_sampling_with_a_correcting_loss_is_refused(dataset, tmp_path):
    with pytest.raises(ConfigError, match="data.balanced_sampler and loss.class_weighted"):
        fit(tiny_cfg(dataset, tmp_path, data={"balanced_sampler": True}), test=False)
    with pytest.raises(ConfigError, match="data.balanced_sampler and loss.logit_adjustment"):
        fit(tiny_cfg(dataset, tmp_path, data={"balanced_sampler": True},
                     loss={"class_weighted": False, "logit_adjustment": 1.0}), test=False)
    assert not (tmp_path / "cpu_tiny").exists()  # refused before any run folder was made
    ok = fit(tiny_cfg(dataset, tmp_path, data={"balanced_sampler": True}, loss={"class_weighted": False},
                      trainer={"fast_dev_run": True}), test=False)
    assert ok.run_dir.is_dir()


def test_resume_of_a_missing_version_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(ConfigError, match="cannot resume version 7"):
        fit(tiny_cfg(dataset, tmp_path, resume_version=7))


def cli_argv(dataset, log_dir, epochs_flag="--max_epochs", log_flag="--log_dir", model_flag="--model_cfg",
             overrides=()):
    return [
        "--config", str(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml"), "--csv", str(dataset), "--img_size", "48",
        "--batch_size", "3", epochs_flag, "5", "--precision", "bf16-mixed", "--gradient_clip_val", "2.5",
        "--early_stop", "4", log_flag, str(log_dir), "--experiment_name", "x", "--seed", "7",
        "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--num_nodes", "1",
        model_flag, str(REPO_ROOT / "cfgs" / "model" / "resnet50.yaml"), "optim.lr=0.01", *overrides, "--skip-missing",
    ]


def check_cli_config(cfg, log_dir):
    assert (cfg.data.img_size, cfg.data.batch_size, cfg.trainer.max_epochs) == (48, 3, 5)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 2.5
    assert cfg.trainer.early_stop == 4 and cfg.trainer.strategy == "ddp" and cfg.trainer.lightning_devices() == 2
    assert cfg.model.backbone == "resnet50" and cfg.optim.lr == 0.01 and cfg.seed == 7
    assert cfg.log_dir == str(log_dir) and cfg.experiment_name == "x"


def test_cli_flags_map_onto_the_config(dataset, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # today's spellings and cfgs/ files: no deprecation
        cfg, _ = parse_config(cli_argv(dataset, tmp_path))
    check_cli_config(cfg, tmp_path)
    assert cfg.data.skip_missing is True and parse_config([])[0].data.skip_missing is False
    cfg, _ = parse_config(["--max_steps", "9", "--accumulate_grad_batches", "2", "--lr", "0.5", "--weight_decay", "0"])
    assert (cfg.trainer.max_steps, cfg.trainer.accumulate_grad_batches, cfg.optim.lr, cfg.optim.weight_decay) == (
        9, 2, 0.5, 0.0)
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        parse_config(["optim.lrr=1"])
    # Overrides anywhere among the flags, as Hydra-style commands are written.
    cfg, _ = parse_config(["optim.lr=3e-4", "--max_epochs", "2", "trainer.fast_dev_run=true", "--seed", "5",
                           "data.img_size=48"])
    assert (cfg.optim.lr, cfg.trainer.max_epochs, cfg.trainer.fast_dev_run, cfg.seed, cfg.data.img_size) == (
        3e-4, 2, True, 5, 48)


def test_cli_old_spellings_still_work_with_a_deprecation_warning(dataset, tmp_path):
    with pytest.warns(DeprecationWarning) as seen:
        cfg, _ = parse_config(cli_argv(dataset, tmp_path, "--epochs", "--output_dir", "--model-cfg",
                                       overrides=["trainer.epochs=5", "model.img_size=224"]))
    check_cli_config(cfg, tmp_path)
    messages = " | ".join(str(w.message) for w in seen)
    for old, new in (("'--epochs'", "'--max_epochs'"), ("'--output_dir'", "'--log_dir'"),
                     ("'--model-cfg'", "'--model_cfg'")):
        assert f"command-line flag {old} is deprecated: use {new}" in messages
    assert "config key 'trainer.epochs' is deprecated: use 'trainer.max_epochs' instead" in messages
    assert "config key 'model.img_size' is deprecated and ignored: 'data.img_size' replaces it" in messages
    assert "its value 224 differs from 'data.img_size' (48), which is used" in messages


def test_old_config_files_load_with_the_new_names(tmp_path):
    old = {"data": {"img_size": 64, "use_metadata": True}, "output_dir": "old_runs",
           "model": {"backbone": "dermaresnet_se_tiny", "img_size": 224, "use_metadata": False, "meta_dim": 15},
           "trainer": {"epochs": 3}}
    with pytest.warns(DeprecationWarning) as seen:
        cfg = from_dict(ExperimentConfig, old)
    assert sorted(str(w.message).split("'")[1] for w in seen) == [
        "model.img_size", "model.meta_dim", "model.use_metadata", "output_dir", "trainer.epochs"]
    assert (cfg.trainer.max_epochs, cfg.log_dir, cfg.data.img_size) == (3, "old_runs", 64)
    assert cfg.data.use_metadata is True  # the data side's switch wins over the old model-side one
    with pytest.warns(DeprecationWarning, match="use 'data.use_metadata' instead"):
        moved = from_dict(ExperimentConfig, {"model": {"use_metadata": False}})
    assert moved.data.use_metadata is False  # given alone, the old key still switches metadata off
    assert old["model"]["img_size"] == 224 and old["trainer"] == {"epochs": 3}  # the caller's dict is untouched


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_text("image,label\nmissing.png,3\n")
    assert train_main(["--csv", str(bad), "--log_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "labels.csv" in err


def test_cli_reports_a_trainer_setting_lightning_refuses(dataset, tmp_path, capsys):
    argv = ["--config", str(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml"), "--csv", str(dataset),
            "--log_dir", str(tmp_path)]
    assert train_main([*argv, "--accelerator", "abacus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Lightning refused the trainer settings (trainer.accelerator='abacus'")
    assert "Traceback" not in err


@pytest.mark.slow
def test_ddp_two_cpu_processes(dataset, tmp_path):
    """``strategy=ddp`` on 2 CPU processes: both ranks train (half the steps each) and the checkpoint loads."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    common = ["--config", str(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml"), "--csv", str(dataset),
              "--img_size", "32", "--batch_size", "4", "--max_epochs", "1", "--accelerator", "cpu", "--no_test",
              "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0"]
    runs = {}
    balanced = ["data.balanced_sampler=true", "loss.class_weighted=false"]  # overrides follow common's own
    for name, extra in {"single": ["--devices", "1"], "ddp": ["--devices", "2", "--strategy", "ddp"],
                        "ddp_balanced": [*balanced, "--devices", "2", "--strategy", "ddp"]}.items():
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.train", *common, *extra, "--log_dir", str(tmp_path / name)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = tmp_path / name / "cpu_tiny" / "version_0"
        if name.startswith("ddp"):
            assert "GLOBAL_RANK: 1" in proc.stderr + proc.stdout
    single = safe_torch_load(runs["single"] / "ckpts" / "last.ckpt")
    ddp = safe_torch_load(runs["ddp"] / "ckpts" / "last.ckpt")
    n_train = int((pd.read_csv(runs["ddp"] / "splits.csv")["split"] == "train").sum())
    assert single["global_step"] == n_train // 4  # batch 4, the last partial batch dropped
    assert ddp["global_step"] == -(-n_train // 2) // 4  # each rank saw its half of the rows
    balanced_ckpt = safe_torch_load(runs["ddp_balanced"] / "ckpts" / "last.ckpt")
    assert balanced_ckpt["global_step"] == ddp["global_step"]  # the balanced draw is shared out too
    assert not list((tmp_path / "ddp" / "cpu_tiny").glob("version_1"))  # both ranks wrote one run folder
    loaded = load_lesion_checkpoint(runs["ddp"] / "ckpts" / "last.ckpt")
    assert loaded.net(torch.zeros(1, 3, 32, 32)).diagnosis_logits.shape == (1, 8)


def test_a_batch_limit_of_one_trains_one_batch(dataset, tmp_path):
    result = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1, "limit_train_batches": 1,
                                                      "limit_val_batches": 1}), test=False)
    assert safe_torch_load(result.last_ckpt)["global_step"] == 1  # not the whole epoch (1.0 would be)


def _epoch_values(run_dir: Path, key: str) -> list[float]:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics.dropna(subset=[key]).sort_values("epoch")[key].tolist()


def test_best_checkpoint_is_the_monitored_maximum_and_early_stopping_stops_on_no_gain(dataset, tmp_path):
    cfg = tiny_cfg(dataset, tmp_path, optim={"lr": 3e-3, "freeze_epochs": 0},
                   trainer={"max_epochs": 5, "limit_val_batches": 1.0, "early_stop": 1,
                            "early_stop_metric": "val/auroc_malignant"})
    result = fit(cfg, test=False)
    values = _epoch_values(result.run_dir, "val/auroc_malignant")
    assert len(set(values)) > 1, f"the monitored metric never moved ({values}): nothing to choose between"
    best_epoch = max(range(len(values)), key=lambda e: (values[e], -e))  # the first epoch at the maximum
    assert safe_torch_load(result.best_ckpt)["epoch"] == best_epoch
    # Early stopping (patience 1, strictly greater is a gain) replayed on the logged values.
    best, expected_epochs = values[0], 5  # every epoch a gain: it runs to max_epochs
    for epoch, value in enumerate(values[1:], start=1):
        if value <= best:
            expected_epochs = epoch + 1
            break
        best = value
    assert len(values) == expected_epochs < 5  # it stopped, at the first epoch without a gain


@pytest.mark.parametrize("weighted", [True, False])
def test_fit_weights_the_diagnosis_loss_by_the_training_split_only_when_asked(dataset, tmp_path, weighted):
    result = fit(tiny_cfg(dataset, tmp_path, loss={"class_weighted": weighted}, trainer={"max_epochs": 1}),
                 test=False)
    hparams = safe_torch_load(result.last_ckpt)["hyper_parameters"]
    table = load_table(dataset)
    split = read_splits(result.run_dir / "splits.csv", table).reindex(table.index)
    expected = class_weights(encode_targets(table[split == "train"])["diagnosis"])
    assert hparams["class_weights"] == pytest.approx(expected.tolist())  # the train split's, not all rows'
    module = LesionModule(torch.nn.Identity(), config=hparams["config"], class_weights=hparams["class_weights"],
                          class_priors=hparams["class_priors"])
    weights = module.diagnosis_loss.class_weights
    if weighted:
        assert weights is not None and weights.tolist() == pytest.approx(expected.tolist())
    else:
        assert weights is None


def test_the_evaluation_loss_is_weighted_by_the_rows_it_scores(monkeypatch):
    module = LesionModule(tiny_net(use_metadata=False), config={})
    logged = []
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.append((name, kw.get("batch_size"))))

    def batch(diagnosis, label):
        n = len(diagnosis)
        return {"image": torch.zeros(n, 3, 32, 32), "diagnosis": torch.tensor(diagnosis),
                "label": torch.tensor(label, dtype=torch.float32), "thickness_lo": torch.full((n,), float("nan")),
                "thickness_hi": torch.full((n,), float("nan"))}

    module._eval_step(batch([0, -1, -1, 1], [1.0, -1.0, 0.0, 0.0]), "val")  # the UNK row has a benign label
    assert logged == [("val/loss", 3)]
    logged.clear()
    module._eval_step(batch([-1, -1], [-1.0, -1.0]), "val")  # unreadable rows only: nothing to weigh
    assert logged == []
