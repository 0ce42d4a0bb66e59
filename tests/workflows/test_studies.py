"""Study runs on synthetic data: one training per recipe, the ablation table, leave-one-dataset-out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import backend.workflows.ablation as ablation
import backend.workflows.lodo as lodo
from backend.config import read_yaml
from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.splits import assign_splits, read_splits, write_splits
from backend.errors import ConfigError
from backend.evaluation.split_eval import predict_rows
from backend.inference.predictor import Predictor
from backend.metrics.calibration import calibrated_probs, fit_calibration
from backend.workflows import study_runs
from backend.workflows.ablation import AblationConfig, ablation_markdown, run_ablation
from backend.workflows.lodo import LodoConfig, calibrated_predictor, in_dataset, leave_out, lodo_markdown, run_lodo
from backend.workflows.study_runs import recipe, train_once
from scripts.ablate import main as ablate_main
from tests.conftest import REPO_ROOT, write_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """48 synthetic lesions from two 'clinics', with a fixed grouped split."""
    root = tmp_path_factory.mktemp("study")
    csv = write_synthetic_dataset(root, n=48, size=40)
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    raw["dataset"] = ["ClinicA" if i % 3 else "ClinicB" for i in range(len(raw))]
    raw.to_csv(csv, index=False)
    table = load_table(csv)
    splits_csv = write_splits(table, assign_splits(table, val_frac=0.25, test_frac=0.25, seed=0), root / "splits.csv")
    return csv, splits_csv


def tiny_base(csv, splits_csv) -> dict:
    base = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    base["data"].update({"csv": str(csv), "split_csv": str(splits_csv), "img_size": 32, "batch_size": 4})
    base["trainer"].update({"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2})
    return base


def test_train_once_trains_each_recipe_once(data, tmp_path, monkeypatch):
    csv, splits_csv = data
    base = tiny_base(csv, splits_csv)
    first = study_runs.train_once(study_runs.recipe(base), tmp_path, "a")
    assert first.best_ckpt.is_file() and first.run_dir.parent.name.startswith("a-")

    def no_training(*args, **kwargs):
        raise AssertionError("a recipe that was trained before must not be trained again")

    monkeypatch.setattr(study_runs, "fit", no_training)
    # Same recipe, other study name: reused.
    again = study_runs.train_once(study_runs.recipe(base), tmp_path, "b")
    assert again.best_ckpt == first.best_ckpt
    # Where a run goes is not part of the recipe; what it learns is.
    moved = study_runs.recipe(base, ["log_dir=elsewhere", "experiment_name=x"])
    assert study_runs.recipe_key(moved) == study_runs.recipe_key(study_runs.recipe(base))
    assert study_runs.recipe_key(study_runs.recipe(base, ["optim.lr=0.5"])) != study_runs.recipe_key(moved)
    with pytest.raises(AssertionError, match="must not be trained again"):
        study_runs.train_once(study_runs.recipe(base, ["optim.lr=0.5"]), tmp_path, "c")
    # A split file rewritten in place is another recipe: its old run may have trained on new test images.
    copy = tmp_path / "splits_copy.csv"
    copy.write_bytes(splits_csv.read_bytes())
    base["data"]["split_csv"] = str(copy)
    before = study_runs.recipe_key(study_runs.recipe(base))
    rows = pd.read_csv(copy)
    rows.loc[0, "split"] = "test" if rows.loc[0, "split"] != "test" else "train"
    rows.to_csv(copy, index=False)
    assert study_runs.recipe_key(study_runs.recipe(base)) != before


def test_ablation_table_scores_variants_on_validation_and_resumes(data, tmp_path, monkeypatch):
    csv, splits_csv = data
    cfg = AblationConfig(base=tiny_base(csv, splits_csv), output_dir=str(tmp_path),
                         variants={"baseline": [], "no_metadata": ["data.use_metadata=false"]},
                         descriptions={"no_metadata": "image only"}, tta=["baseline"], n_boot=20)

    calls = []
    predict_rows = ablation.predict_rows

    def recording(predictor, rows, tta=False, progress=False):
        calls.append(tta)
        return predict_rows(predictor, rows, tta=tta, progress=progress)

    monkeypatch.setattr(ablation, "predict_rows", recording)
    results = run_ablation(cfg)
    assert list(results["variant"]) == ["baseline", "no_metadata", "baseline + TTA"]
    assert calls == [False, False, True]
    n_val = int((pd.read_csv(splits_csv)["split"] == "val").sum())
    assert set(results["val_rows"]) == {n_val}
    assert results["auroc_malignant"].between(0, 1).all()
    assert (results["auroc_malignant_lo"] <= results["auroc_malignant"]).all()
    # The TTA row scores the baseline's own checkpoint: no second training.
    assert results.iloc[0]["run_dir"] == results.iloc[2]["run_dir"] != results.iloc[1]["run_dir"]
    text = ablation_markdown(results)
    assert "| no_metadata | image only |" in text and "+0.000" in text.splitlines()[2]
    # A rerun finds every variant in results.csv and trains nothing.
    real_train_once = ablation.train_once
    monkeypatch.setattr(ablation, "train_once", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    assert run_ablation(cfg)["variant"].tolist() == results["variant"].tolist()
    # A variant whose recipe changed is trained again (its old row is stale); a dropped variant leaves the table.
    trained = []
    monkeypatch.setattr(ablation, "train_once", lambda exp, root, name: trained.append(name) or
                        real_train_once(exp, root, name))
    cfg.variants = {"baseline": [], "no_metadata": ["data.use_metadata=false", "optim.lr=0.002"]}
    cfg.tta = []
    again = run_ablation(cfg)
    assert trained == ["no_metadata"] and again["variant"].tolist() == ["baseline", "no_metadata"]
    assert again.iloc[1]["run_dir"] != results.iloc[1]["run_dir"]
    assert pd.read_csv(tmp_path / "results.csv")["variant"].tolist() == ["baseline", "no_metadata"]


def test_ablation_config_errors_name_the_variant(data, tmp_path, capsys):
    csv, splits_csv = data
    cfg = AblationConfig(base=tiny_base(csv, splits_csv), variants={"bad": ["model.wings=2"]})
    with pytest.raises(ConfigError, match=r"variants\.bad: .*wings"):
        cfg.validate()
    with pytest.raises(ConfigError, match=r"tta: \['ghost'\]"):
        AblationConfig(base=tiny_base(csv, splits_csv), variants={"a": []}, tta=["ghost"]).validate()
    study = tmp_path / "study.yaml"
    study.write_text("variants: {}\n", encoding="utf-8")
    assert ablate_main(["--config", str(study)]) == 2
    assert "name at least one variant" in capsys.readouterr().err


def test_leave_out_removes_the_dataset_from_labels_and_splits(data, tmp_path):
    csv, splits_csv = data
    out_csv, out_splits, images = leave_out(csv, None, splits_csv, "ClinicB", tmp_path / "w")
    kept = pd.read_csv(out_csv)
    assert set(kept["dataset"]) == {"ClinicA"} and len(kept) == 32
    assert len(pd.read_csv(out_splits)) == 32 and images == csv.parent / "images"
    assert len(load_table(out_csv, img_dir=images)) == 32
    with pytest.raises(ConfigError, match="no row .* has dataset 'ClinicC'"):
        leave_out(csv, None, splits_csv, "ClinicC", tmp_path / "x")


def test_leave_out_also_removes_images_tagged_with_two_datasets(data, tmp_path):
    csv, splits_csv = data
    rows = pd.read_csv(csv)
    rows.loc[1:2, "dataset"] = "ClinicB+ClinicA"  # two ClinicA images that ClinicB holds too
    tagged = tmp_path / "tagged.csv"
    rows.to_csv(tagged, index=False)
    out_csv, _, _ = leave_out(tagged, csv.parent / "images", splits_csv, "ClinicB", tmp_path / "w")
    kept = pd.read_csv(out_csv)
    assert set(kept["dataset"]) == {"ClinicA"} and len(kept) == 30  # ClinicB's 16 and the 2 tagged images go
    assert list(in_dataset(rows["dataset"], "ClinicA")[1:3]) == [True, True]
    assert not in_dataset(pd.Series(["ClinicBB", None]), "ClinicB").any()


def test_lodo_scores_left_out_dataset_and_in_domain_reference(data, tmp_path, monkeypatch):
    csv, splits_csv = data
    cfg = LodoConfig(base=tiny_base(csv, splits_csv), datasets=["ClinicB"], n_boot=20, output_dir=str(tmp_path),
                     variants={"ours": [], "naive": ["data.color_constancy=false", "data.augment=light"]})
    calibrated_on = []  # (checkpoint, validation image ids) of every calibration
    real_calibrated_predictor = lodo.calibrated_predictor

    def recording(ckpt, val, method):
        calibrated_on.append((ckpt, set(val["image_id"])))
        return real_calibrated_predictor(ckpt, val, method)

    monkeypatch.setattr(lodo, "calibrated_predictor", recording)
    records = run_lodo(cfg, splits_csv, calibration="bias_corrected")
    # Each run is calibrated once, on its own validation split: the reference on the whole of it, the
    # left-out run on it without ClinicB (which that run never saw).
    table = load_table(csv)
    val_ids = set(table.loc[read_splits(splits_csv, table).reindex(table.index) == "val", "image_id"])
    clinic_b = set(table.loc[table["dataset"] == "ClinicB", "image_id"])
    assert val_ids & clinic_b and val_ids - clinic_b  # the validation split holds both clinics
    expected = [(f"lodo-{name}-{run}-", ids) for name in ("ours", "naive")
                for run, ids in (("all", val_ids), ("without-clinicb", val_ids - clinic_b))]
    assert len(calibrated_on) == len(expected)
    for (ckpt, ids), (run, want) in zip(calibrated_on, expected, strict=True):
        assert ckpt.parents[2].name.startswith(run) and ids == want, (ckpt, sorted(ids))
    assert {r["calibration"] for r in records} == {"bias_corrected"}
    assert [(r["recipe"], r["setting"]) for r in records] == [
        (name, setting) for name in ("ours", "naive")
        for setting in ("in-domain (test split)", "left out (all images)", "left out (test split)")]
    splits = pd.read_csv(splits_csv)
    labels = pd.read_csv(csv)
    n_test_b = int(labels["dataset"].eq("ClinicB")[splits["split"].eq("test")].sum())
    assert records[1]["rows"] == 16 and records[0]["rows"] == records[2]["rows"] == n_test_b
    # The left-out model never trained on ClinicB: its run's splits hold no ClinicB image.
    runs = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("lodo-ours-without-clinicb"))
    assert len(runs) == 1
    trained = pd.read_csv(next((tmp_path / runs[0]).glob("version_*/splits.csv")))
    assert not set(trained["image_id"]) & set(labels.loc[labels["dataset"] == "ClinicB", "image"].str[:-4])
    text = lodo_markdown(records)
    assert "| ours | ClinicB | left out (all images) | 16 (" in text
    with pytest.raises(ConfigError, match="name at least one dataset"):
        LodoConfig(base=tiny_base(csv, splits_csv)).validate()
    with pytest.raises(ConfigError, match="calibration: unknown 'platt'"):
        run_lodo(cfg, splits_csv, calibration="platt")


def test_lodo_runs_are_calibrated_on_their_own_validation_split_as_export_does(data, tmp_path):
    csv, splits_csv = data
    cfg = LodoConfig(base=tiny_base(csv, splits_csv), datasets=["ClinicB"], n_boot=10, output_dir=str(tmp_path))
    ckpt = train_once(recipe(cfg.base_tree(), [f"data.split_csv={splits_csv}"]), str(tmp_path), "calib").best_ckpt
    table = load_table(csv)
    val = table[read_splits(splits_csv, table).reindex(table.index) == "val"]
    calibrated = calibrated_predictor(ckpt, val, "bias_corrected")
    raw = Predictor.from_checkpoint(ckpt)
    logits = predict_rows(raw, val).raw.logits
    temperature, offsets = fit_calibration(logits, encode_targets(val)["diagnosis"], "bias_corrected")
    assert calibrated.temperature == pytest.approx(temperature) and calibrated.class_offsets == pytest.approx(offsets)
    got = predict_rows(calibrated, val).raw.probs
    np.testing.assert_allclose(got, calibrated_probs(logits, temperature, offsets), atol=1e-5)
    with pytest.raises(ConfigError, match="no validation image with a diagnosis"):
        calibrated_predictor(ckpt, val.iloc[:0], "temperature")


def test_ablation_refuses_missing_start_weights_before_training_anything(data, tmp_path, monkeypatch):
    csv, splits_csv = data
    cfg = AblationConfig(base=tiny_base(csv, splits_csv), output_dir=str(tmp_path), n_boot=20,
                         variants={"baseline": [], "byol": [f"model.pretrained_path={tmp_path / 'nope.safetensors'}"]})
    monkeypatch.setattr(ablation, "train_once", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    with pytest.raises(ConfigError, match=r"start weights not found for byol: .*nope.safetensors"):
        run_ablation(cfg)
