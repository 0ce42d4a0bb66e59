"""The model screen shows the card's test figures, subgroups and the other-clinics check."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

from app import card_view
from backend.io.bundle import read_card, write_card
from tests.app.conftest import new_app, texts

CARD_FIGURES = {
    "status": "Interim model: below the project's targets.",
    "test_split": {"rows": 123},
    "test_metrics": {
        "balanced_accuracy": {"value": 0.61, "lo": 0.55, "hi": 0.66, "n": 123},
        "auroc_malignant": {"value": 0.871, "lo": 0.84, "hi": 0.9, "n": 123},
        "f1/MEL": {"value": 0.5, "lo": 0.4, "hi": 0.6, "n": 20},
        "thickness_band_accuracy": {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0},
    },
    "test_subgroups": [
        {"attribute": "sex", "group": "female", "n": 60, "n_malignant": 10, "balanced_accuracy": 0.6,
         "auroc_malignant": 0.88},
        {"attribute": "dataset", "group": "ClinicB", "n": 30, "n_diagnosed": 12, "n_malignant": 5,
         "balanced_accuracy": None, "auroc_malignant": 0.7},
    ],
    "leave_one_dataset_out": {"results": [
        {"recipe": "ours", "dataset": "ClinicB", "setting": "left out (all images)", "rows": 90, "malignant": 12,
         "metrics": {"auroc_malignant": {"value": 0.77, "lo": 0.7, "hi": 0.83},
                     "auroc_melanoma": {"value": 0.8, "lo": 0.71, "hi": 0.88}}},
    ]},
}


def test_rows_put_headline_first_and_name_missing_values():
    rows = card_view.metric_rows(CARD_FIGURES)
    assert [r["metric"] for r in rows] == ["Malignant vs benign AUROC", "8-class balanced accuracy",
                                           "Thickness band accuracy", "F1 MEL"]
    assert rows[0]["value"] == "0.871" and rows[0]["95% CI"] == "0.840–0.900"
    assert rows[2]["value"] == "n/a" and rows[2]["95% CI"] == "n/a"
    assert card_view.subgroup_attributes(CARD_FIGURES) == ["sex", "dataset"]
    assert card_view.subgroup_rows(CARD_FIGURES, "dataset") == [
        {"group": "ClinicB", "images": 30, "with a diagnosis": 12, "malignant": 5, "balanced accuracy": "n/a",
         "malignant AUROC": "0.700"}]
    lodo = card_view.lodo_rows(CARD_FIGURES)
    assert lodo[0]["malignant AUROC"] == "0.770 (0.700–0.830)" and lodo[0]["dataset"] == "ClinicB"
    assert card_view.metric_rows({}) == [] and card_view.lodo_rows({}) == []


def test_model_page_shows_test_figures_subgroups_and_other_clinics(app_env, tmp_path, monkeypatch):
    bundle = tmp_path / "models" / "with_figures"
    shutil.copytree(app_env.fusion, bundle)
    write_card(bundle, {**read_card(bundle), **CARD_FIGURES})
    monkeypatch.setenv("DERMALENS_MODELS_DIR", str(bundle.parent))
    monkeypatch.setenv("DERMALENS_MODEL", str(bundle))
    at = new_app().run()
    at.switch_page("pages/model.py").run()
    assert not at.exception
    headers = [h.value for h in at.subheader]
    assert {"Test-split figures", "By subgroup", "Other clinics (leave-one-dataset-out)"} <= set(headers)
    assert "below the project's targets" in texts(at.warning)
    words = texts(at.markdown)  # every kind of figure in the table is said in words
    for name in ("AUROC", "Balanced accuracy", "Calibration error (ECE)", "95% interval"):
        assert f"- **{name}**: " in words, name
    assert "0.5 is a coin toss" in words
    tables = [df.value for df in at.dataframe]
    assert any("Malignant vs benign AUROC" in set(t["metric"]) for t in tables if "metric" in t)
    assert any(set(t.get("group", [])) == {"female"} for t in tables)
    at.radio(key="card_subgroup").set_value("dataset").run()
    assert any(set(t.get("group", [])) == {"ClinicB"} for t in (df.value for df in at.dataframe))
    assert any("0.770 (0.700–0.830)" in set(t.get("malignant AUROC", [])) for t in (df.value for df in at.dataframe)
               if "recipe" in t)


def test_model_page_without_test_figures_has_no_empty_sections(app_env):
    at = new_app().run()
    at.switch_page("pages/model.py").run()
    assert not at.exception
    assert "Test-split figures" not in [h.value for h in at.subheader]


OPERATING_POINTS = {
    "risk": {"weights": {"MEL": 1.5, "BCC": 1.3, "SCC": 1.0}, "green_below": 0.05, "yellow_below": 0.4,
             "chosen_on": "val split of splits.csv (300 images)"},
    "operating_points": {
        "validation": {"chosen_on": "val split of splits.csv (300 images)",
                       "targets": {"not_green_sensitivity": 0.95, "red_specificity": 0.9},
                       "achieved": {"not_green_sensitivity": 0.953, "red_specificity": 0.902},
                       "yellow_band_empty": False},
        "test": {"n": 100, "lights": {
            "green": {"n": 50, "share_of_images": 0.5, "malignant": 1, "benign": 49, "share_malignant": 0.02},
            "yellow": {"n": 30, "share_of_images": 0.3, "malignant": 6, "benign": 24, "share_malignant": 0.2},
            "red": {"n": 20, "share_of_images": 0.2, "malignant": 13, "benign": 7, "share_malignant": 0.65}},
            "not_green": {"sensitivity": 0.95, "specificity": 0.61}, "red": {"sensitivity": 0.65, "specificity": 0.91}},
    },
}


def test_model_page_says_what_each_light_means(app_env, tmp_path, monkeypatch):
    bundle = tmp_path / "models" / "with_operating_points"
    shutil.copytree(app_env.fusion, bundle)
    write_card(bundle, {**read_card(bundle), **OPERATING_POINTS})
    monkeypatch.setenv("DERMALENS_MODELS_DIR", str(bundle.parent))
    monkeypatch.setenv("DERMALENS_MODEL", str(bundle))
    at = new_app().run()
    at.switch_page("pages/model.py").run()
    assert not at.exception
    page = texts(at.markdown)
    assert "Green below 0.050, yellow from 0.050 to below 0.400, red from 0.400 (chosen for this model" in page
    assert "| red | 20.0% | 13 / 7 | 65.0% |" in page
    assert "achieved 95.3% on validation" in page


def test_settings_read_as_words_not_json():
    rows = card_view.setting_rows({"temperature": 0.4831, "fitted_on": None, "preprocessing": {
        "img_size": 160, "mean": [0.5, 0.5, 0.5], "hair_removal": False}})
    assert rows == [
        {"Setting": "Calibration temperature (1 = unchanged)", "Value": "0.483"},
        {"Setting": "Fitted on", "Value": "—"},
        {"Setting": "Preprocessing › Network input (px, square)", "Value": "160"},
        {"Setting": "Preprocessing › Normalisation mean (R, G, B)", "Value": "0.5, 0.5, 0.5"},
        {"Setting": "Preprocessing › Hair removal", "Value": "no"},
    ]


def test_model_page_shows_no_raw_json_and_no_server_path(app_env):
    at = new_app().run()
    at.switch_page("pages/model.py").run()
    assert not at.exception
    assert len(at.json) == 0
    settings = [df.value for df in at.dataframe if "Setting" in df.value]
    assert any("Calibration temperature (1 = unchanged)" in set(t["Setting"]) for t in settings)
    shown = "\n".join([texts(at.markdown), texts(at.caption)])
    assert str(app_env.fusion.parent) not in shown and "Model file: " in shown


BUNDLED = Path(__file__).resolve().parents[2] / "assets" / "models" / "default"
#: What the issue forbids on a clinic's screen: server paths, tensor names, estimator jargon, raw metric keys.
RAW = ("runs/", ".csv", "Ledoit", "Tensors", "tensors", "ood_stats", "val/", "{", "}")
LONG_FLOAT = re.compile(r"\d\.\d{4,}")


def _cells(at) -> list[str]:
    return [str(cell) for df in at.dataframe for column in df.value.columns
            for cell in [column, *df.value[column].tolist()]]


def test_model_page_reads_the_bundled_card_in_words(tmp_path, monkeypatch):
    bundle = tmp_path / "models" / "default"
    shutil.copytree(BUNDLED, bundle)
    card = read_card(bundle)
    card["validation_metrics"]["val/brier_score"] = 0.123456789  # an unknown key gets a readable name
    write_card(bundle, card)
    monkeypatch.setenv("DERMALENS_MODELS_DIR", str(bundle.parent))
    monkeypatch.setenv("DERMALENS_MODEL", str(bundle))
    at = new_app().run()
    at.switch_page("pages/model.py").run()
    assert not at.exception
    cells = _cells(at)
    # The risk section gives its thresholds to 4 decimals on purpose (a cut-off, not a score): only it may.
    prose = [str(e.value) for e in [*at.markdown, *at.caption, *at.warning, *at.subheader]
             if "risk score" not in str(e.value) and "risk =" not in str(e.value)]
    shown = "\n".join([*cells, *prose])
    for raw in RAW:
        assert raw not in shown, raw
    assert not LONG_FLOAT.findall(shown)
    assert len(at.json) == 0
    chosen = "\n".join(str(e.value) for e in at.markdown if "risk score" in str(e.value))
    assert "chosen on the validation split (2158 images)" in chosen and "runs/" not in chosen

    metrics = {r: v for t in (df.value for df in at.dataframe) if list(t.columns) == ["metric", "value"]
               for r, v in zip(t["metric"], t["value"], strict=True)}
    val, ops = card["validation_metrics"], card["operating_points"]["validation"]
    assert metrics["Malignant vs benign AUROC"] == f"{val['auroc_malignant']:.3f}"
    assert metrics["8-class balanced accuracy"] == f"{val['balanced_accuracy']:.3f}"
    assert metrics["8-class accuracy"] == f"{val['accuracy']:.3f}"
    assert metrics["Images"] == str(ops["n_malignant"] + ops["n_benign"])
    assert metrics["Brier score"] == "0.123"
    per_class = next(t for t in (df.value for df in at.dataframe) if "recall (sensitivity)" in t)
    assert per_class.iloc[0]["class"].startswith("MEL")
    assert per_class.iloc[0]["recall (sensitivity)"] == f"{val['recall/MEL']:.3f}"

    headers = [h.value for h in at.subheader]
    assert {"Validation metrics", "Calibration", "Preprocessing", "Out-of-distribution check"} <= set(headers)
    text = texts(at.markdown)
    calib = card["calibration"]
    assert f"Probabilities calibrated by {calib['method']} (T = {calib['temperature']:.3f})" in text
    assert ("one offset per diagnosis that puts back how common it is" in text) == bool(calib.get("class_offsets"))
    assert "on the validation split (1974 images with a diagnosis)" in text
    assert f"expected calibration error {calib['ece_before']:.3f} → {calib['ece_after']:.3f}" in text
    size = card["preprocessing"]["img_size"]
    assert f"Images resized to {size} px" in text and "Shades of Gray" in text and "input scaled to [-1, 1]" in text
    resolution = card["test_resolution"]  # the bundled model predicts at another side than it learned on
    assert f"learned on {resolution['train_img_size']} px images and predicts at {size} px" in text
    assert "99th percentile of 5000 training images" in text and "unlike the images the model was trained on" in text
    settings = {r: v for t in (df.value for df in at.dataframe) if "Setting" in t
                for r, v in zip(t["Setting"], t["Value"], strict=True)}
    assert settings["Fitted on"] in ("the validation split (1974 images with a diagnosis)",
                                     "the training split (5000 images)")
    assert settings["Out-of-distribution threshold"] == f"{card['ood']['threshold']:.3f}"
    # what stays: status, intended use, limitations, test figures, the risk score
    assert "Decision support for trying the tool" in texts(at.warning)
    assert {"Intended use", "Limitations", "Test-split figures", "Risk score and traffic light"} <= set(headers)


def test_card_sections_in_words():
    assert card_view.plain_source("val split of runs/a/splits.csv (12 images)") == "the validation split (12 images)"
    assert card_view.plain_source("train split of C:\\data\\splits.csv") == "the training split"
    assert card_view.plain_source("see /srv/x/labels.csv now") == "see now"
    assert card_view.validation_rows({"val/auroc_malignant": 0.7355623100303952, "val/f1/MEL": 0.5,
                                      "val/n_images": 40.0, "val/auroc_melanoma": math.nan}) == [
        {"metric": "Malignant vs benign AUROC", "value": "0.736"},
        {"metric": "Melanoma vs rest AUROC", "value": "n/a"},
        {"metric": "Images", "value": "40"},
    ]
    assert card_view.validation_class_rows({"f1/MEL": 0.5, "support/MEL": 3.0}) == [
        {"class": "MEL", "images": "3", "precision": "n/a", "recall (sensitivity)": "n/a", "F1": "0.500",
         "AUROC (vs rest)": "n/a"}]
    assert card_view.calibration_sentence({"method": "none (raw checkpoint)", "temperature": 1.0}) == (
        "Probabilities are the network's raw outputs, not calibrated.")
    assert card_view.calibration_sentence({"method": "temperature scaling", "fitted_on": None, "temperature": 1.0}) == (
        "Probabilities calibrated by temperature scaling (T = 1, i.e. unchanged).")
    assert card_view.calibration_sentence({"method": "bias-corrected temperature scaling", "temperature": 0.8,
                                           "class_offsets": [0.5, -0.5]}) == (
        "Probabilities calibrated by bias-corrected temperature scaling (T = 0.8), with one offset per diagnosis "
        "that puts back how common it is. The network was trained to weigh every diagnosis equally, and its "
        "class-balanced suggested diagnosis still does (shown first when it is at least 10% probable).")
    assert card_view.preprocessing_sentence({"img_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.2, 0.2, 0.2],
                                             "color_constancy": False, "hair_removal": True}) == (
        "Images resized to 224 px (shorter side) and centre-cropped to a square, no colour constancy, hair removed "
        "digitally, input normalised (mean 0.485, 0.456, 0.406, spread 0.2, 0.2, 0.2).")
    assert "95th percentile of the training images" in card_view.ood_sentence({"percentile": 95})
    assert card_view.test_resolution_sentence({"test_resolution": {"img_size": 208, "train_img_size": 160}}) == (
        "The network learned on 160 px images and predicts at 208 px, the size at which it best separated "
        "malignant from benign lesions in the validation images, with its internal normalisation re-measured on "
        "training images at 208 px.")
    for card in ({}, {"test_resolution": {"img_size": 160, "train_img_size": 160}}):
        assert card_view.test_resolution_sentence(card) == ""
    rows = card_view.setting_rows({"method": "Mahalanobis distance, Ledoit-Wolf shrunk covariance",
                                   "tensors": ["ood_stats.mean"], "threshold": 74.10929723443951})
    assert rows == [{"Setting": "Method", "Value": "Mahalanobis distance of the model's image features"},
                    {"Setting": "Out-of-distribution threshold", "Value": "74.109"}]
