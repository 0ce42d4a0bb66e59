"""The committed default model: small enough to ship, loads on a fresh clone, and carries its full card."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from app.components import model_warnings
from backend.data.metadata import MetadataEncoder
from backend.data.schema import DIAGNOSES
from backend.io.bundle import load_bundle
from backend.model_store import DEFAULT_MODEL_DIR, describe_model_dir
from tests.conftest import make_lesion_image

MAX_BUNDLE_BYTES = 30 * 1024 * 1024
CARD_METRICS = {"balanced_accuracy", "auroc_macro", "auroc_malignant", "sensitivity_at_80_specificity", "ece",
                "thickness_band_accuracy", *(f"f1/{d}" for d in DIAGNOSES)}


@pytest.fixture(scope="module")
def predictor():
    from backend.inference.predictor import Predictor

    return Predictor.from_checkpoint(DEFAULT_MODEL_DIR)


def test_bundle_is_complete_and_at_most_30_mb():
    status = describe_model_dir(DEFAULT_MODEL_DIR)
    assert status.available, status.reason
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert 0 < size <= MAX_BUNDLE_BYTES


def test_bundle_predicts_without_tta_as_its_card_was_measured(predictor, one_torch_thread):
    image = make_lesion_image(np.random.default_rng(0), 96)
    [pred] = predictor.predict([image])
    assert predictor.tta is False and predictor.card["test_split"]["tta"] is False
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    # A synthetic drawing may be flagged as unlike the training images (grey); the model's own light is still there.
    assert 0.0 <= pred.malignant <= 1.0 and pred.model_light in {"green", "yellow", "red"}
    assert pred.tta is False and pred.thickness_mm >= 0.0


def test_card_has_test_metrics_subgroups_and_the_other_clinics_check(predictor):
    card = predictor.card
    metrics = card["test_metrics"]
    assert set(metrics) >= CARD_METRICS
    for name in ("balanced_accuracy", "auroc_malignant", "auroc_macro"):
        entry = metrics[name]
        assert entry["lo"] <= entry["value"] <= entry["hi"] and entry["n"] > 1000
    assert {"sex", "age", "site", "dataset"} <= {row["attribute"] for row in card["test_subgroups"]}
    results = card["leave_one_dataset_out"]["results"]
    assert {r["setting"] for r in results} == {"in-domain (test split)", "left out (all images)",
                                               "left out (test split)"}
    assert {"Derm7pt", "ISIC2017"} <= {r["dataset"] for r in results}
    assert card["intended_use"] and card["limitations"] and card["status"]
    # The predictor applies the calibration written in the card file (bias-corrected temperature scaling,
    # fitted on the validation images with a diagnosis), and that fit lowered the validation ECE.
    calib = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())["calibration"]
    assert predictor.temperature == pytest.approx(calib["temperature"])
    np.testing.assert_allclose(predictor.class_offsets, calib["class_offsets"])
    assert calib["ece_after"] < calib["ece_before"]
    assert f"({int(card['validation_metrics']['n_diagnosis'])} images with a diagnosis)" in calib["fitted_on"]


def test_card_states_operating_points_variants_baseline_and_start_weights(predictor):
    """v1: thresholds chosen on validation (used by the predictor), what each light meant on the test split,
    the squashed and bordered test variants beside the plain one and beside v0.2, and the start weights."""
    card = predictor.card
    val = card["operating_points"]["validation"]
    assert "val split" in card["risk"]["chosen_on"] and predictor.risk.chosen_on == card["risk"]["chosen_on"]
    assert val["achieved"]["not_green_sensitivity"] >= 0.95 and val["achieved"]["red_specificity"] >= 0.90
    test = card["operating_points"]["test"]
    assert sum(v["n"] for v in test["lights"].values()) == card["test_split"]["rows"]
    assert set(card["test_variants"]["metrics"]) == {"plain", "squashed", "bordered"}
    assert set(card["baseline"]["metrics"]) == {"plain", "squashed", "bordered"} and card["baseline"]["name"] == "v0.2"
    assert card["start_weights"]["licence"].startswith("Apache") and card["start_weights"]["obtain"]
    assert card["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the TensorFlow start's input scale travelled


def test_the_app_has_nothing_to_warn_about_the_bundled_model(predictor):
    assert model_warnings(predictor) == []  # OOD statistics, calibration and its own operating points


def test_bundle_predicts_through_onnx_runtime(predictor):
    assert predictor.onnx_engine is not None


def test_the_bundled_card_uses_the_current_config_keys():
    """No deprecation warning when the app loads the shipped model."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loaded = load_bundle(DEFAULT_MODEL_DIR)
    assert "img_size" not in loaded.card["config"]["model"] and loaded.card["config"]["trainer"]["max_epochs"] >= 1


def test_a_card_with_the_old_model_keys_still_loads(tmp_path):
    """Bundles written before data.img_size became the one input size (v1.0 as first shipped) carry
    model.img_size/use_metadata/meta_dim: they load with deprecation warnings, the network is what the data
    side says, and loading never rewrites the card."""
    bundle = tmp_path / "old_bundle"
    shutil.copytree(DEFAULT_MODEL_DIR, bundle, ignore=shutil.ignore_patterns("*.onnx"))
    card = json.loads((bundle / "model_card.json").read_text())
    card["config"]["model"].update({"img_size": 224, "use_metadata": True, "meta_dim": 15})
    card["config"]["trainer"]["epochs"] = card["config"]["trainer"].pop("max_epochs")
    card["config"]["output_dir"] = card["config"].pop("log_dir")
    card.pop("onnx", None)
    (bundle / "model_card.json").write_text(json.dumps(card))
    before = (bundle / "model_card.json").read_bytes()
    with pytest.warns(DeprecationWarning) as seen:
        loaded = load_bundle(bundle)
    messages = " | ".join(str(w.message) for w in seen)
    for key in ("model.img_size", "model.use_metadata", "model.meta_dim", "trainer.epochs", "output_dir"):
        assert f"config key '{key}' is deprecated" in messages
    assert "its value 224 differs from 'data.img_size' (160), which is used" in messages
    net, card = loaded.model.net, loaded.card
    assert net.backbone.img_size == card["config"]["data"]["img_size"] == 160
    # It predicts at the side export chose on validation (the network is convolutional: any side runs).
    assert card["preprocessing"]["img_size"] == card["test_resolution"]["img_size"]
    assert net.use_metadata and net.meta_dim == MetadataEncoder.from_dict(card["metadata_encoder"]).dim == 15
    assert (bundle / "model_card.json").read_bytes() == before
