"""Model bundles: export CLI, card contents, integrity checks, atomic writes and ONNX Runtime parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.splits import read_splits
from backend.errors import CheckpointError, ConfigError
from backend.evaluation.evaluate import default_splits_csv, predict_table
from backend.evaluation.split_eval import row_metadata
from backend.files import atomic_write_bytes
from backend.inference.predictor import Predictor
from backend.inference.quality import FeatureStats
from backend.io.bundle import REQUIRED_CARD_KEYS, load_bundle, read_card, write_card
from backend.io.onnx import onnx_session, run_onnx
from backend.metrics.calibration import (
    apply_temperature,
    calibrated_probs,
    expected_calibration_error,
    fit_temperature,
)
from backend.metrics.classification import binary_auroc, malignant_probability
from backend.model_store import describe_model_dir
from backend.workflows.export import export_bundle
from scripts.export import main as export_main
from tests.inference.tiny import lesions, train_tiny_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    ckpt, csv = train_tiny_checkpoint(root)
    out = root / "bundle"
    assert export_main(["--checkpoint", str(ckpt), "--output", str(out), "--name", "Tiny test model", "--version",
                        "0.3", "--csv", str(csv), "--onnx"]) == 0
    return {"ckpt": ckpt, "csv": csv, "bundle": out}


def test_card_holds_everything_the_app_needs(trained):
    card = read_card(trained["bundle"])
    assert set(REQUIRED_CARD_KEYS) <= set(card)
    assert card["name"] == "Tiny test model" and card["version"] == "0.3" and card["created"].endswith("+00:00")
    assert card["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert card["preprocessing"]["img_size"] == 64 and card["config"]["model"]["backbone"] == "dermaresnet_se_tiny"
    assert set(card["thickness_scaler"]) == {"mean", "std"} and card["metadata_encoder"]["sexes"] == ["male", "female"]
    calib = card["calibration"]
    assert "val split" in calib["fitted_on"] and "train split" in card["ood"]["fitted_on"]
    # The figures themselves are recomputed from the run's splits in the next test.
    assert card["validation_metrics"]["n_images"] > 0 and "accuracy" in card["validation_metrics"]
    assert "clinician" in card["intended_use"] and len(card["limitations"]) >= 3
    assert card["risk"]["weights"] == {"MEL": 1.5, "BCC": 1.3, "SCC": 1.0}
    ops = card["operating_points"]["validation"]
    assert "val split" in card["risk"]["chosen_on"] and ops["green_below"] == card["risk"]["green_below"]
    assert ops["achieved"]["not_green_sensitivity"] >= 0.95 and ops["achieved"]["red_specificity"] >= 0.90
    assert card["onnx"]["file"] == "model.onnx" and (trained["bundle"] / "model.onnx").is_file()
    status = describe_model_dir(trained["bundle"])
    assert status.available and status.name == "Tiny test model"
    assert not list(trained["bundle"].glob(".*.tmp"))  # atomic writes leave no temporary files


def run_split(trained, split):
    """Rows of one split of the run's table, and the raw checkpoint's outputs on them (temperature 1)."""
    table = load_table(trained["csv"])
    rows = table[read_splits(default_splits_csv(trained["ckpt"]), table).reindex(table.index) == split]
    rows = rows.reset_index(drop=True)
    raw, kept, skipped = Predictor.from_checkpoint(trained["ckpt"]).raw_outputs(rows["image"].tolist(),
                                                                                  row_metadata(rows))
    assert not skipped and kept == list(range(len(rows)))
    return rows, raw


def test_card_calibration_and_ood_figures_are_those_of_the_runs_val_and_train_splits(trained):
    card = read_card(trained["bundle"])
    calib = card["calibration"]
    # Temperature and ECE before/after: refitted here on the validation split's own logits.
    val, raw = run_split(trained, "val")
    labels = encode_targets(val)["diagnosis"]
    known = labels >= 0
    temperature = fit_temperature(raw.logits, labels)
    assert calib["temperature"] == pytest.approx(temperature, rel=1e-3)
    before = expected_calibration_error(apply_temperature(raw.logits, 1.0)[known], labels[known])
    after = expected_calibration_error(apply_temperature(raw.logits, temperature)[known], labels[known])
    assert abs(before - after) > 0.01  # calibration moved the figure, so the two cannot be confused
    assert calib["ece_before"] == pytest.approx(before, abs=1e-4)
    assert calib["ece_after"] == pytest.approx(after, abs=1e-4)
    assert f"({int(known.sum())} images with a diagnosis)" in calib["fitted_on"]
    # OOD statistics: fitted on the features of every training-split image (the table has other splits).
    train, feats = run_split(trained, "train")
    assert 0 < len(train) < len(load_table(trained["csv"]))
    stats = FeatureStats.fit(feats.features, percentile=card["ood"]["percentile"])
    assert card["ood"]["n"] == len(train) == stats.n and f"({len(train)} images)" in card["ood"]["fitted_on"]
    assert card["ood"]["threshold"] == pytest.approx(stats.threshold, rel=1e-3)
    stored = Predictor.from_checkpoint(trained["bundle"], engine="torch").feature_stats
    np.testing.assert_allclose(stored.mean, stats.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored.precision, stats.precision, rtol=1e-3, atol=1e-3)


def test_bundle_predictor_uses_stored_temperature_and_ood_stats(trained):
    predictor = Predictor.from_checkpoint(trained["bundle"])
    card = read_card(trained["bundle"])
    assert predictor.temperature == pytest.approx(card["calibration"]["temperature"])
    assert predictor.feature_stats is not None and predictor.feature_stats.threshold == card["ood"]["threshold"]
    # The thresholds chosen for this model on its validation split, not the policy file's fixed ones.
    assert (predictor.risk.green_below, predictor.risk.yellow_below) == (
        card["risk"]["green_below"], card["risk"]["yellow_below"])
    assert predictor.risk.chosen_on == card["risk"]["chosen_on"]
    same = Predictor.from_checkpoint(trained["ckpt"], temperature=predictor.temperature,
                                     feature_stats=predictor.feature_stats)
    images = lesions(3, seed=4)
    for a, b in zip(predictor.predict(images), same.predict(images), strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-7)
        assert a.ood_distance == pytest.approx(b.ood_distance, rel=1e-4) and a.flags == b.flags


def test_onnx_runtime_matches_pytorch(trained):
    predictor = Predictor.from_checkpoint(trained["bundle"])
    session = onnx_session(trained["bundle"] / "model.onnx")
    images = lesions(3, seed=6)
    x = predictor.preprocess(images)
    meta, used = predictor.encode_metadata([{"age_approx": 60, "sex": "male"}, None, {"sex": "female"}], 3)
    for with_meta in (False, True):
        m = torch.from_numpy(meta) if with_meta else None
        with torch.no_grad():
            out = predictor.net(x, m)
        ref_probs = torch.softmax(out.diagnosis_logits / predictor.temperature, -1).numpy()
        ref_mm = predictor.scaler.denormalise(out.thickness).numpy()
        got = run_onnx(session, x.contiguous().numpy(), meta if with_meta else None)
        np.testing.assert_allclose(got["logits"], out.diagnosis_logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(got["probabilities"], ref_probs, atol=1e-4)
        np.testing.assert_allclose(got["thickness_mm"], ref_mm, atol=1e-4)
        np.testing.assert_allclose(got["features"], out.features.numpy(), atol=1e-4)
    # The Predictor feeds every row through the metadata branch (rows without metadata as "all unknown").
    assert used.tolist() == [True, False, True]
    got = run_onnx(session, x.contiguous().numpy(), meta, np.ones(3, dtype=np.float32))
    results = predictor.predict(images, [{"age_approx": 60, "sex": "male"}, None, {"sex": "female"}])
    expected = np.array([[r.probabilities[c] for c in predictor.classes] for r in results])
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-4)


def test_export_without_data_keeps_temperature_one(trained, tmp_path):
    result = export_bundle(trained["ckpt"], tmp_path / "plain")
    card = result.card
    assert card["calibration"]["temperature"] == 1.0 and card["calibration"]["fitted_on"] is None
    assert card["ood"] is None and "val/auroc_malignant" in card["validation_metrics"]
    assert Predictor.from_checkpoint(tmp_path / "plain").feature_stats is None


def test_tampered_or_incomplete_bundles_are_refused(trained, tmp_path):
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(trained["bundle"], bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        Predictor.from_checkpoint(bad)
    card = json.loads((trained["bundle"] / "model_card.json").read_text())
    for key, value, match in (("format_version", 99, "format version 99"), ("format", "other", "not a DermaLens"),
                              ("classes", ["MEL", "NV"], "classes")):
        broken = tmp_path / f"broken_{key}"
        shutil.copytree(trained["bundle"], broken)
        write_card(broken, {**card, key: value})
        with pytest.raises(CheckpointError, match=match):
            load_bundle(broken)
    partial = tmp_path / "partial"
    shutil.copytree(trained["bundle"], partial)
    write_card(partial, {k: v for k, v in card.items() if k != "preprocessing"})
    with pytest.raises(CheckpointError, match="missing keys"):
        Predictor.from_checkpoint(partial)
    (partial / "model_card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Predictor.from_checkpoint(partial)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "card.json"
    atomic_write_bytes(target, b"old")
    assert target.read_bytes() == b"old" and (target.stat().st_mode & 0o777) == 0o644
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"newer")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_bundle_predicts_through_onnx_runtime_with_the_eager_outputs(trained, tmp_path):
    """ONNX Runtime serves plain predictions (faster on the CPU), identical to eager PyTorch to 1e-4."""
    fast = Predictor.from_checkpoint(trained["bundle"])
    eager = Predictor.from_checkpoint(trained["bundle"], engine="torch")
    assert fast.onnx_engine is not None and eager.onnx_engine is None
    images = lesions(4, seed=7)
    meta = [{"age_approx": 60, "sex": "female", "anatom_site_general": "posterior torso"}, None, {}, {"sex": "male"}]
    for a, b in zip(fast.predict(images, meta), eager.predict(images, meta), strict=True):
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
        assert a.thickness_mm == pytest.approx(b.thickness_mm, abs=1e-4) and a.flags == b.flags
        assert a.risk == pytest.approx(b.risk, abs=1e-4) and a.traffic_light == b.traffic_light
    # Another temperature than the file's falls back to PyTorch rather than give wrong probabilities.
    other = Predictor.from_checkpoint(trained["bundle"], temperature=fast.temperature * 2)
    [p_other] = other.predict(images[:1])
    [p_eager] = Predictor.from_checkpoint(trained["bundle"], engine="torch",
                                          temperature=fast.temperature * 2).predict(images[:1])
    assert p_other.probabilities == pytest.approx(p_eager.probabilities, abs=1e-6)


def test_a_swapped_onnx_file_is_refused(trained, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="SHA-256"):
        Predictor.from_checkpoint(copy)
    assert Predictor.from_checkpoint(copy, engine="torch").onnx_engine is None  # PyTorch alone still works
    with pytest.raises(CheckpointError, match="no ONNX model"):
        Predictor.from_checkpoint(trained["ckpt"], engine="onnxruntime")


def test_export_predicts_at_the_test_side_chosen_on_validation(trained, tmp_path):
    out = tmp_path / "resized"
    assert export_main(["--checkpoint", str(trained["ckpt"]), "--output", str(out), "--csv", str(trained["csv"]),
                        "--test_img_sizes", "48", "80", "--adapt_images", "16", "--onnx"]) == 0
    card = read_card(out)
    record = card["test_resolution"]
    rows = record["candidates"]
    assert record["train_img_size"] == 64 and [r["img_size"] for r in rows] == [64, 48, 80]
    assert rows[0]["batchnorm"] == "as trained"
    assert all(r["batchnorm"] == "adapted on 16 training images" for r in rows[1:])
    best = max(rows, key=lambda r: r["auroc_malignant"])
    assert record["img_size"] == best["img_size"] == card["preprocessing"]["img_size"]
    assert record["chosen_by"] == "malignant AUROC on the validation split"
    assert onnx_session(out / "model.onnx").get_inputs()[0].shape[-1] == best["img_size"]
    # The bundle is the chosen network at the chosen side: it reproduces that candidate's validation score.
    predictor = Predictor.from_checkpoint(out, engine="torch")
    assert predictor.img_size == best["img_size"]
    assert predictor.temperature == pytest.approx(best["temperature"], abs=1e-4)
    table = load_table(trained["csv"])
    val = table[read_splits(default_splits_csv(trained["ckpt"]), table).reindex(table.index) == "val"]
    val = val.reset_index(drop=True)
    raw, kept, _ = predictor.raw_outputs(val["image"].tolist(), row_metadata(val))
    labels = encode_targets(val.iloc[kept].reset_index(drop=True))["label"]
    assert binary_auroc(labels, malignant_probability(raw.probs)) == pytest.approx(best["auroc_malignant"], abs=1e-4)
    trained_bn = Predictor.from_checkpoint(trained["ckpt"]).net.state_dict()
    bundle_bn = predictor.net.state_dict()
    stats = [k for k in trained_bn if k.endswith("running_mean")]
    assert stats and all(torch.equal(trained_bn[k], bundle_bn[k]) for k in stats) == (best["img_size"] == 64)


def test_bias_corrected_calibration_is_folded_into_the_bundle(trained, tmp_path):
    out = tmp_path / "bcts"
    assert export_main(["--checkpoint", str(trained["ckpt"]), "--output", str(out), "--csv", str(trained["csv"]),
                        "--calibration", "bias_corrected", "--onnx"]) == 0
    calib = read_card(out)["calibration"]
    offsets = np.array(calib["class_offsets"])
    assert calib["method"] == "bias-corrected temperature scaling" and offsets.shape == (8,)
    assert abs(offsets.sum()) < 1e-5 and np.abs(offsets).max() > 0
    images = lesions(6, seed=8)
    raw_ckpt = Predictor.from_checkpoint(trained["ckpt"])  # temperature 1: the network's own logits
    x = raw_ckpt.preprocess(images)
    logits = raw_ckpt.forward(x).logits
    expected = calibrated_probs(logits, calib["temperature"], offsets)
    for engine in ("torch", "onnxruntime"):
        bundle = Predictor.from_checkpoint(out, engine=engine)
        np.testing.assert_allclose(bundle.forward(x).probs, expected, atol=1e-5)
        np.testing.assert_allclose(bundle.class_offsets, offsets)
        # The called class is the network's class-balanced decision, its probability the calibrated one.
        results, own = bundle.predict(images), raw_ckpt.predict(images)
        assert [r.top_class for r in results] == [r.top_class for r in own]
        assert [r.top_probability for r in results] == [r.probabilities[r.top_class] for r in results]
        assert any(r.top_class != max(r.probabilities, key=r.probabilities.get) for r in results)
    # The validation figures score that decision: balanced accuracy as the uncalibrated network's.
    plain = read_card(trained["bundle"])["validation_metrics"]
    assert read_card(out)["validation_metrics"]["balanced_accuracy"] == pytest.approx(plain["balanced_accuracy"])
    # Another temperature keeps the same decision (the folded offsets are rescaled to it).
    hotter = Predictor.from_checkpoint(out, engine="torch", temperature=2.0)
    np.testing.assert_allclose(hotter.class_offsets, offsets * calib["temperature"] / 2.0)
    assert [r.top_class for r in hotter.predict(images)] == [r.top_class for r in own]
    # Grad-CAM of "the predicted class" explains the suggested diagnosis, not the top logit.
    bundle = Predictor.from_checkpoint(out, engine="torch")
    suggested = [r.top_class for r in bundle.predict(images)]
    for image, cls in zip(images, suggested, strict=True):
        np.testing.assert_allclose(bundle.explain(image), bundle.explain(image, target=cls), atol=1e-6)
    # scripts.evaluate reads the network's own logits out of the bundle, as from the checkpoint.
    table = load_table(trained["csv"]).iloc[:6]
    np.testing.assert_allclose(predict_table(bundle, table).logits, predict_table(raw_ckpt, table).logits, atol=1e-4)
    with pytest.raises(ConfigError, match="unknown calibration method 'platt'"):
        export_bundle(trained["ckpt"], tmp_path / "bad", csv=trained["csv"], calibration_method="platt")
    with pytest.raises(ConfigError, match="fixed temperature .1.5. cannot be combined"):
        export_bundle(trained["ckpt"], tmp_path / "bad", csv=trained["csv"], temperature=1.5,
                      calibration_method="bias_corrected")
    with pytest.raises(ConfigError, match=r"test_img_sizes \[96\] need the labelled table"):
        export_bundle(trained["ckpt"], tmp_path / "bad", test_img_sizes=[96])


def test_a_model_trained_from_timm_weights_loads_offline_without_downloading(trained, tmp_path, monkeypatch):
    """``model.pretrained: timm`` names where training started; loading the saved model never fetches it."""
    import shutil

    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: (_ for _ in ()).throw(AssertionError(
        "a download was asked for")) if kw.get("pretrained") else create(*a, **kw))
    card = json.loads((trained["bundle"] / "model_card.json").read_text())
    card["config"]["model"].update(pretrained="timm", pretrained_path=None)
    bundle = tmp_path / "from_timm"
    shutil.copytree(trained["bundle"], bundle)
    write_card(bundle, card)
    reference = Predictor.from_checkpoint(trained["bundle"], engine="torch")
    loaded = Predictor.from_checkpoint(bundle, engine="torch")
    image = lesions(1, seed=5)[0]
    assert loaded.predict([image])[0].probabilities == pytest.approx(reference.predict([image])[0].probabilities)
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"].update(pretrained="timm", pretrained_path=None)
    torch.save(ckpt, tmp_path / "from_timm.ckpt")
    assert Predictor.from_checkpoint(tmp_path / "from_timm.ckpt").predict([image])[0].top_class in card["classes"]


def test_export_reads_the_table_as_asked_and_names_a_missing_image(trained, tmp_path, capsys):
    import pandas as pd

    table = pd.read_csv(trained["csv"])
    extra = table.iloc[[0]].assign(image="gone.png", lesion_id="L_gone", patient_id="P_gone")
    with_missing = trained["csv"].parent / "with_missing.csv"
    pd.concat([table, extra]).to_csv(with_missing, index=False)
    splits = trained["ckpt"].parent.parent / "splits.csv"
    argv = ["--checkpoint", str(trained["ckpt"]), "--output", str(tmp_path / "b"), "--csv", str(with_missing),
            "--splits_csv", str(splits)]
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gone.png" in err and "Traceback" not in err
    assert export_main([*argv, "--skip-missing"]) == 0  # the flag the error suggests exists
    assert read_card(tmp_path / "b")["calibration"]["fitted_on"].startswith("val split")


def test_re_export_without_onnx_removes_the_earlier_onnx_file(trained, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(trained["ckpt"], out, onnx=True)
    assert (out / "model.onnx").is_file()
    export_bundle(trained["ckpt"], out, temperature=1.5)  # another calibration, no ONNX asked for
    assert not (out / "model.onnx").exists() and "onnx" not in read_card(out)
    assert Predictor.from_checkpoint(out).onnx_engine is None
