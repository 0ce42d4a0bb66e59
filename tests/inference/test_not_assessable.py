"""Images that cannot be assessed get the grey light, from the Predictor and from ``scripts.predict``'s CSV.

An 8-px uniform square once got a green "Low risk", a black frame and a blurred picture a red one:
any quality flag must give ``grey`` (the model's own light is kept in ``model_light``).
"""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.data.schema import DIAGNOSES
from backend.inference.quality import QualityFlag
from backend.inference.records import OUTPUT_COLUMNS, Prediction
from backend.inference.risk import RiskConfig
from scripts.predict import main
from tests.inference.tiny import lesions, tiny_predictor, train_tiny_checkpoint

COLOURS = ("green", "yellow", "red")


def bad_images() -> dict[str, np.ndarray]:
    """The images users saw a confident light on: tiny uniform, black, blurred."""
    lesion = lesions(1, size=96, seed=3)[0]
    return {
        "tiny_square.png": np.full((8, 8, 3), 180, np.uint8),
        "black_frame.png": np.zeros((96, 96, 3), np.uint8),
        "blurred.png": cv2.GaussianBlur(lesion, (0, 0), sigmaX=4),
    }


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor()


@pytest.mark.parametrize("name", list(bad_images()))
def test_predictor_gives_grey_to_unassessable_images(predictor, name):
    result = predictor.predict([bad_images()[name]])[0]
    assert result.flags, "the quality gate must flag this image"
    assert result.traffic_light == "grey" and result.traffic_light not in COLOURS
    assert not result.assessable and result.model_light in COLOURS  # kept for "show anyway"
    assert result.to_row()["traffic_light"] == "grey"
    for reason in result.flag_reasons.values():  # plain words, no measurement jargon
        assert reason[:1].isupper() and "Laplacian" not in reason and "std" not in reason


def test_tiny_square_reason_names_its_size(predictor):
    result = predictor.predict([bad_images()["tiny_square.png"]])[0]
    assert "The image is too small (8 x 8 px); at least 64 px" in result.flag_reasons["tiny"]
    black = predictor.predict([bad_images()["black_frame.png"]])[0]
    assert "The image is too dark or blank" in black.flag_reasons["too_dark"]


def test_row_has_plain_reasons_after_the_codes():
    flags = [QualityFlag("too_dark", "The image is too dark or blank to assess: retake it with more light."),
             QualityFlag("blurred", "The image is too blurred to assess: retake it in focus.")]
    probs = np.full(len(DIAGNOSES), 1 / len(DIAGNOSES))
    row = Prediction.from_outputs("x.png", probs, 0.5, flags, RiskConfig()).to_row()
    assert list(row) == list(OUTPUT_COLUMNS)
    assert OUTPUT_COLUMNS.index("quality_reasons") == OUTPUT_COLUMNS.index("flags") + 1
    assert row["traffic_light"] == "grey" and row["flags"] == "too_dark;blurred"
    assert row["quality_reasons"] == ("The image is too dark or blank to assess: retake it with more light.; "
                                      "The image is too blurred to assess: retake it in focus.")
    clean = Prediction.from_outputs("y.png", probs, 0.5, [], RiskConfig()).to_row()
    assert clean["flags"] == "" and clean["quality_reasons"] == ""


def test_normal_image_keeps_its_colour(predictor):
    for result in predictor.predict(lesions(3, size=96, seed=5)):
        assert result.flags == [] and result.assessable
        assert result.traffic_light in COLOURS and result.traffic_light == result.model_light


def test_predict_cli_writes_grey_for_unassessable_rows(tmp_path, capsys):
    ckpt = train_tiny_checkpoint(tmp_path / "train")[0]
    folder = tmp_path / "images"
    folder.mkdir()
    for name, image in bad_images().items():
        Image.fromarray(image).save(folder / name)
    Image.fromarray(lesions(1, size=96, seed=5)[0]).save(folder / "normal.png")
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    with open(out, newline="") as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {*bad_images(), "normal.png"}
    for name in bad_images():
        assert rows[name]["flags"] and rows[name]["traffic_light"] == "grey", rows[name]
        assert rows[name]["model_light"] in COLOURS
        # Why it is grey, in words a clinician reads; the codes stay in ``flags``.
        reasons = rows[name]["quality_reasons"]
        assert reasons.startswith("The image is") and "retake" in reasons.lower(), rows[name]
        assert "_" not in reasons and reasons != rows[name]["flags"], rows[name]  # no code like too_dark
    assert "too small" in rows["tiny_square.png"]["quality_reasons"]
    assert "too dark or blank" in rows["black_frame.png"]["quality_reasons"]
    assert "blurred" in rows["blurred.png"]["quality_reasons"]
    assert rows["normal.png"]["flags"] == "" and rows["normal.png"]["quality_reasons"] == ""
    assert rows["normal.png"]["traffic_light"] in COLOURS
    assert rows["normal.png"]["traffic_light"] == rows["normal.png"]["model_light"]
