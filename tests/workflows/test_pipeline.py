"""The default-model pipeline on synthetic data: stages, records, resume-by-skipping, card contents."""

from __future__ import annotations

import json

import pytest

import backend.workflows.pipeline as pipeline_module
from backend.config import from_dict, read_yaml
from backend.errors import ConfigError
from backend.inference.predictor import Predictor
from backend.workflows.pipeline import STAGES, PipelineConfig, load_pipeline_config, render_card_markdown, run_pipeline
from scripts.default_model import main as pipeline_main
from tests.conftest import REPO_ROOT, write_synthetic_dataset


def tiny_pipeline(tmp_path, stages, **extra):
    csv = write_synthetic_dataset(tmp_path / "data", n=48, size=40)
    supervised = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    supervised["data"].update({"csv": str(csv), "img_size": 32, "batch_size": 4})
    supervised["trainer"]["max_epochs"] = 1
    supervised["log_dir"] = str(tmp_path / "runs")
    return from_dict(PipelineConfig, {
        "name": "tiny", "version": "9", "bundle_dir": str(tmp_path / "bundle"), "work_dir": str(tmp_path / "work"),
        "stages": stages, "supervised": supervised, "n_boot": 20, "card_markdown": str(tmp_path / "card.md"),
        **extra,
    })


def test_default_config_is_valid():
    cfg = load_pipeline_config(REPO_ROOT / "cfgs" / "default.yaml")
    assert cfg.bundle_dir == "assets/models/default" and cfg.stages == [s for s in STAGES if s != "byol"]
    assert cfg.byol is None and cfg.supervised["data"]["csv"].endswith("labels.csv")
    assert cfg.supervised["model"]["backbone"] == "mobilenetv2_100" and cfg.supervised["model"]["pretrained_path"]
    assert cfg.lodo is not None and {"Derm7pt", "ISIC2017"} <= set(cfg.lodo["datasets"])
    assert cfg.variants == ["squashed", "bordered"] and set(cfg.start_weights) == {"name", "licence", "obtain"}
    assert cfg.calibration == "bias_corrected" and cfg.test_img_sizes and cfg.adapt_images >= 1


def test_stages_run_record_and_skip(tmp_path):

    cfg = tiny_pipeline(tmp_path, ["train", "export", "card"], test_img_sizes=[40], adapt_images=8)
    records = run_pipeline(cfg)
    assert records["byol"] is None and records["train"]["best_ckpt"].endswith("best.ckpt")
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["name"] == "tiny" and card["version"] == "9"
    # The export stage tried predicting at 40 px (BatchNorm adapted) beside the training side, 32 px.
    resolution = records["export"]["test_resolution"]
    assert [r["img_size"] for r in resolution["candidates"]] == [32, 40] and resolution == card["test_resolution"]
    assert card["preprocessing"]["img_size"] == resolution["img_size"]
    metrics = card["test_metrics"]
    assert {"balanced_accuracy", "auroc_malignant", "ece", "f1/MEL", "thickness_band_accuracy"} <= set(metrics)
    assert card["test_split"]["rows"] > 0 and card["test_subgroups"]
    text = (tmp_path / "card.md").read_text()
    assert "Test-split metrics" in text and "| balanced_accuracy |" in text
    assert f"Test resolution: Predicts at {resolution['img_size']} px (trained at 32 px" in text
    assert "- Calibration: temperature scaling, temperature " in text and "offsets" not in text
    # What each light means on the test split, and the acquisition variants beside the plain split.
    lights = card["operating_points"]["test"]["lights"]
    assert sum(v["n"] for v in lights.values()) == card["test_split"]["rows"]
    assert set(card["test_variants"]["metrics"]) == {"plain", "squashed", "bordered"}
    for variant, change in card["test_variants"]["changes"].items():
        for name, entry in change.items():
            after, before = card["test_variants"]["metrics"][variant][name]["value"], metrics[name]["value"]
            if before is None or after is None:  # undefined on the tiny split (e.g. one class only)
                assert entry["value"] is None, (variant, name)
            else:
                assert entry["value"] == pytest.approx(after - before, abs=1e-9), (variant, name)
        assert change["balanced_accuracy"]["value"] is not None
    assert set(card["test_variants"]["changes"]) == {"squashed", "bordered"}
    assert "Change of tiny" in text
    assert "What the traffic light means" in text and "Robustness to acquisition" in text
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
    for sizes, match in (([16], "integer >= 32 pixels, got 16"), ([192, 192], "192 is listed twice"),
                         (["big"], "got 'big'")):
        with pytest.raises(ConfigError, match=match):
            from_dict(PipelineConfig, {"test_img_sizes": sizes})
    with pytest.raises(ConfigError, match="adapt_images must be >= 1, got 0"):
        from_dict(PipelineConfig, {"adapt_images": 0})
    assert pipeline_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_split_stage_fixes_the_split_for_training_and_keeps_held_out_images_from_byol(tmp_path):
    import pandas as pd


    cfg = tiny_pipeline(tmp_path, ["splits", "train", "export", "card"], tta=True)
    records = run_pipeline(cfg)
    fixed = pd.read_csv(records["splits"]["splits_csv"])
    used = pd.read_csv(f"{records['train']['run_dir']}/splits.csv")
    assert fixed[["image_id", "split"]].equals(used[["image_id", "split"]])
    held_out = set((tmp_path / "work" / "pretrain_exclude.txt").read_text().split())
    assert held_out == {f"{i}.png" for i in fixed.loc[fixed["split"] != "train", "image_id"]}
    assert records["splits"]["counts"]["train"] == int((fixed["split"] == "train").sum())
    # The bundle predicts with TTA, as its card's figures were measured.
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["inference"] == {"tta": True} and card["test_split"]["tta"] is True
    assert Predictor.from_checkpoint(tmp_path / "bundle").tta is True
    assert Predictor.from_checkpoint(tmp_path / "bundle", tta=False).tta is False
    assert "auroc_melanoma" in card["test_metrics"]
    # benchmarks/model_card.py rebuilds the split from the card and reproduces its figures.
    bench = _load_script(REPO_ROOT / "benchmarks" / "model_card.py")
    assert bench.main(["--bundle", str(tmp_path / "bundle"), "--n-boot", "20"]) == 0
    card["test_metrics"]["auroc_malignant"]["value"] += 0.05
    (tmp_path / "bundle" / "model_card.json").write_text(json.dumps(card))
    assert bench.main(["--bundle", str(tmp_path / "bundle"), "--n-boot", "20"]) == 1
    # ... and the variants' changes from the plain split.
    card["test_metrics"]["auroc_malignant"]["value"] -= 0.05
    card["test_variants"]["changes"]["bordered"]["balanced_accuracy"]["value"] += 0.05
    (tmp_path / "bundle" / "model_card.json").write_text(json.dumps(card))
    assert bench.main(["--bundle", str(tmp_path / "bundle"), "--n-boot", "20"]) == 1
    assert bench.main(["--bundle", str(tmp_path / "bundle"), "--n-boot", "20", "--no-variants"]) == 0
    # A card that cannot show its split is the one rebuilt is not "reproduced".
    del card["test_split"]["image_ids_sha256"]
    (tmp_path / "bundle" / "model_card.json").write_text(json.dumps(card))
    assert bench.main(["--bundle", str(tmp_path / "bundle"), "--n-boot", "20", "--no-variants"]) == 1
    assert bench._gap(0.921, float("nan")) == float("inf") and bench._gap(0.5, 0.5) == 0


def _load_script(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_byol_stage_pretrains_on_training_images_only(tmp_path, monkeypatch):

    seen = {}

    def fake_pretrain(byol):
        seen["exclude"] = byol.data.exclude_list
        return type("R", (), {"run_dir": tmp_path, "export": tmp_path / "backbone.safetensors", "global_step": 1})()

    monkeypatch.setattr(pipeline_module, "pretrain", fake_pretrain)
    cfg = tiny_pipeline(tmp_path, ["splits", "byol"], byol={"data": {"dirs": [str(tmp_path / "data" / "images")]}})
    run_pipeline(cfg)
    assert seen["exclude"] == str(tmp_path / "work" / "pretrain_exclude.txt")


def test_lodo_stage_adds_the_check_to_the_card(tmp_path):
    cfg = tiny_pipeline(tmp_path, ["splits", "train", "export", "card"])
    run_pipeline(cfg)
    csv = tmp_path / "data" / "labels.csv"
    import pandas as pd

    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    raw["dataset"] = ["ClinicA" if i % 3 else "ClinicB" for i in range(len(raw))]
    raw.to_csv(csv, index=False)
    base = dict(cfg.supervised)
    base["trainer"] = {**base["trainer"], "limit_train_batches": 2, "limit_val_batches": 2}
    cfg.lodo = {"base": base, "datasets": ["ClinicB"], "n_boot": 10, "output_dir": str(tmp_path / "studies")}
    records = run_pipeline(cfg, stages=["lodo"])
    assert records["lodo"]["results"] == 3 and records["lodo"]["wall_seconds"] > 0
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    settings = [r["setting"] for r in card["leave_one_dataset_out"]["results"]]
    assert settings == ["in-domain (test split)", "left out (all images)", "left out (test split)"]
    text = (tmp_path / "card.md").read_text()
    assert "## Leave-one-dataset-out check" in text and "| ours | ClinicB | left out (all images) |" in text
    assert "## Test-split metrics" in text  # the card's own metrics survive the re-render
    # The runs are calibrated as the pipeline's export calibrates the bundle.
    assert card["leave_one_dataset_out"]["calibration"] == cfg.calibration == "temperature"
    assert "Each run was calibrated on its own validation split (temperature scaling)" in text


def test_forced_retrain_starts_a_new_run_and_an_interrupted_one_resumes(tmp_path):
    cfg = tiny_pipeline(tmp_path, ["train"])
    first = run_pipeline(cfg)["train"]
    record = tmp_path / "work" / "train.json"
    first_record = record.read_text()
    # --force after a finished train stage (a changed recipe) must not continue the finished run.
    forced = run_pipeline(cfg, force=True)["train"]
    assert first["run_dir"].endswith("version_0") and forced["run_dir"].endswith("version_1")
    # Back to "version_1 was interrupted" (the record still names version_0): the rerun resumes it.
    record.write_text(first_record)
    resumed = run_pipeline(cfg, force=True)["train"]
    assert resumed["run_dir"] == forced["run_dir"]
    assert sorted(p.name for p in (tmp_path / "runs" / "cpu_tiny").iterdir()) == ["version_0", "version_1"]


def test_a_changed_recipe_reruns_its_stage_and_every_later_one(tmp_path):
    cfg = tiny_pipeline(tmp_path, ["train", "export"])
    first = run_pipeline(cfg)
    assert run_pipeline(cfg)["export"] == first["export"]  # nothing changed: every record reused
    cfg.supervised["optim"]["lr"] = cfg.supervised["optim"].get("lr", 1e-3) / 3  # the recipe changed
    second = run_pipeline(cfg)
    assert first["train"]["run_dir"].endswith("version_0") and second["train"]["run_dir"].endswith("version_1")
    assert second["export"]["inputs"] != first["export"]["inputs"]  # exported again, from the new run
    assert second["export"]["checkpoint"] == second["train"]["best_ckpt"] != first["export"]["checkpoint"]
    # An interrupted rerun (record superseded, not yet rewritten) resumes its own new run.
    assert (tmp_path / "work" / "train.superseded.json").is_file()


def test_forced_byol_rerun_starts_a_new_run_and_an_interrupted_one_resumes(tmp_path, monkeypatch):

    root, asked = tmp_path / "byol_logs" / "exp", []

    def fake_pretrain(byol):
        asked.append(byol.resume_version)
        number = byol.resume_version if byol.resume_version is not None else len(list(root.glob("version_*")))
        run = root / f"version_{number}"
        (run / "ckpts").mkdir(parents=True, exist_ok=True)
        (run / "ckpts" / "last.ckpt").write_bytes(b"finished")
        return type("R", (), {"run_dir": run, "export": run / "backbone.safetensors", "global_step": 1})()

    monkeypatch.setattr(pipeline_module, "pretrain", fake_pretrain)
    byol = {"data": {"dirs": [str(tmp_path / "data" / "images")]}, "log_dir": str(tmp_path / "byol_logs"),
            "experiment_name": "exp"}
    cfg = tiny_pipeline(tmp_path, ["byol"], byol=byol)
    record = tmp_path / "work" / "byol.json"
    run_pipeline(cfg)
    first_record = record.read_text()
    run_pipeline(cfg, force=True)  # version_0 is finished: a new run, not a continuation
    record.write_text(first_record)  # as if version_1 had been interrupted
    run_pipeline(cfg, force=True)
    assert asked == [None, None, 1]


def test_a_changed_label_file_reruns_the_split_and_a_changed_optimiser_does_not(tmp_path, caplog):
    cfg = tiny_pipeline(tmp_path, ["splits"])
    first = run_pipeline(cfg)["splits"]
    cfg.supervised["optim"]["lr"] = 0.123  # a training setting: the split does not depend on it
    assert run_pipeline(cfg)["splits"] == first
    csv = tmp_path / "data" / "labels.csv"
    csv.write_text(csv.read_text().replace("SYN_0003.png,AK", "SYN_0003.png,BKL", 1))  # a label corrected
    again = run_pipeline(cfg)["splits"]
    assert again["inputs"] != first["inputs"]  # made again from the corrected table
    assert len(again["splits_sha256"]) == 64 and len(again["pretrain_exclude_sha256"]) == 64  # contents, for later
    # Prose among the settings (a long status line) is no path: no file-system error.
    cfg.status = "A model for trying the tool, not a clinically validated one. " * 6
    assert len(pipeline_module.stage_inputs(cfg, "card", {})) == 16
    # Asked for a later stage only, a stale earlier record is named rather than silently used.
    csv.write_text(csv.read_text().replace("SYN_0003.png,BKL", "SYN_0003.png,AK", 1))
    with caplog.at_level("WARNING", logger="backend.workflows.pipeline"):
        run_pipeline(cfg, stages=["lodo"])
    assert "stage splits was not asked for, and its record" in caplog.text


def test_an_interrupted_run_is_resumed_only_with_the_inputs_it_started_with(tmp_path):
    cfg = tiny_pipeline(tmp_path, ["train"])
    root = tmp_path / "runs" / "exp"
    (root / "version_0" / "ckpts").mkdir(parents=True)
    (root / "version_0" / "ckpts" / "last.ckpt").write_bytes(b"interrupted")
    assert pipeline_module._interrupted_version(cfg, "train", root, "recipe-a") == 0  # no record yet: resumed
    assert pipeline_module._interrupted_version(cfg, "train", root, "recipe-a") == 0  # same inputs: resumed
    # The recipe changed since version_0 started: a new run, not version_0 under the new settings.
    assert pipeline_module._interrupted_version(cfg, "train", root, "recipe-b") is None
    (root / "version_1").mkdir()  # recipe B's run died before its first checkpoint
    assert pipeline_module._interrupted_version(cfg, "train", root, "recipe-b") is None  # not recipe A's version_0
    (root / "version_2" / "ckpts").mkdir(parents=True)
    (root / "version_2" / "ckpts" / "last.ckpt").write_bytes(b"interrupted")
    assert pipeline_module._interrupted_version(cfg, "train", root, "recipe-b") == 2  # its own run resumes


def test_card_markdown_names_the_calibration_offsets():
    card = {"classes": ["MEL", "NV"], "calibration": {"method": "bias-corrected temperature scaling",
                                                      "temperature": 0.8, "class_offsets": [1.25, -1.25]}}
    text = render_card_markdown(card, "")
    line = "- Calibration: bias-corrected temperature scaling, temperature 0.800 and offsets MEL +1.25, NV -1.25"
    assert line in text


def test_card_markdown_names_how_the_loss_treats_imbalance_and_the_weight_average():
    weighted = render_card_markdown({"config": {"loss": {"class_weighted": True}, "trainer": {}}}, "")
    assert "class-weighted loss True, Shades" in weighted and "moving average" not in weighted
    adjusted = render_card_markdown({"config": {"loss": {"class_weighted": False, "logit_adjustment": 1.0},
                                                "trainer": {"ema_decay": 0.997}}}, "")
    assert ("logit-adjusted loss (tau 1.0), weights averaged (exponential moving average, decay 0.997 per step), "
            "Shades") in adjusted
