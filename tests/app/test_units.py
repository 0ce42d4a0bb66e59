"""The dashboard's plain helpers: upload ids, model listing, render helpers and exports (no AppTest)."""

from __future__ import annotations

import csv
import io
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import backend.data.images as images
import backend.model_store as store
from app import components, report, report_pdf, resources, state
from backend.data.schema import IMAGE_EXTENSIONS
from backend.evaluation.card_sections import band_accuracy_sentence
from backend.inference.inputs import PreparedInput
from backend.inference.risk import RiskConfig


def _prediction(light: str = "red", **extra) -> SimpleNamespace:
    probs = {"MEL": 0.4, "NV": 0.2, "BCC": 0.1, "AK": 0.1, "BKL": 0.1, "DF": 0.05, "VASC": 0.03, "SCC": 0.02}
    fields = dict(probabilities=probs, benign=0.48, malignant=0.52, risk=0.75, traffic_light=light, thickness_mm=1.3,
                  thickness_band="1-2 mm", flags=[], flag_reasons={}, metadata_used=False, top_class="MEL",
                  top_probability=0.4, image="x.png", tta=False)
    fields.update(extra)
    return SimpleNamespace(**fields)


def test_upload_id_is_content_and_name_hash():
    assert state.upload_id("a.png", b"123") == state.upload_id("a.png", b"123")
    assert state.upload_id("a.png", b"123") != state.upload_id("b.png", b"123")
    assert state.upload_id("a.png", b"123") != state.upload_id("a.png", b"124")
    assert len(state.upload_id("a.png", b"")) == 16 and state.upload_id("a.png", b"").isalnum()


def test_prepare_upload_decodes_once_to_the_display_size(monkeypatch):

    calls = []
    decode = images._decode
    monkeypatch.setattr(images, "_decode", lambda *a, **kw: calls.append(a[1]) or decode(*a, **kw))
    buffer = io.BytesIO()
    Image.fromarray(np.full((1500, 2600, 3), 120, np.uint8)).save(buffer, format="PNG")
    prepared = components.prepare_upload("big.png", buffer.getvalue())
    assert calls == ["big.png"]
    assert prepared.name == "big.png" and prepared.data == buffer.getvalue()
    assert max(prepared.image.shape[:2]) == components.DISPLAY_SIDE and prepared.image.dtype == np.uint8
    assert [f".{t}" for t in components.ACCEPTED_TYPES] == list(IMAGE_EXTENSIONS)


def test_upload_prediction_key_tracks_model_and_metadata():
    upload = state.Upload("id", PreparedInput("a.png", np.zeros((2, 2, 3), np.uint8), b""), b"")
    assert upload.name == "a.png" and upload.data == b"" and upload.image.shape == (2, 2, 3)
    assert not upload.is_current("m1") and not upload.metadata_given()
    upload.prediction, upload.prediction_key = object(), ("m1", upload.metadata_key())
    assert upload.is_current("m1") and not upload.is_current("m2")
    upload.metadata["sex"] = "male"
    assert not upload.is_current("m1") and upload.metadata_for_model() == {"sex": "male"}


def _bundle(folder, name):
    folder.mkdir(parents=True)
    (folder / store.WEIGHTS_FILE).write_bytes(b"w")
    (folder / store.CARD_FILE).write_text(json.dumps({"name": name}))
    return folder


def test_models_listing_default_first_then_bundles_and_checkpoints(tmp_path, monkeypatch):
    models = tmp_path / "models"
    default = _bundle(models / "default", "Main model")
    _bundle(models / "b_other", "Other")
    (models / "not_a_bundle").mkdir()
    (models / "runs" / "x" / "ckpts").mkdir(parents=True)
    (models / "runs" / "x" / "ckpts" / "best.ckpt").write_bytes(b"c")
    monkeypatch.setenv(resources.MODELS_DIR_ENV, str(models))
    monkeypatch.setenv(resources.DEFAULT_MODEL_ENV, str(default))
    options = resources.list_models()
    assert [o.label for o in options] == ["Default: Main model (default)", "Other (b_other)",
                                          os.path.join("runs", "x", "ckpts", "best.ckpt")]
    assert options[0].is_default and resources.default_model_problem() is None
    monkeypatch.setenv(resources.DEFAULT_MODEL_ENV, str(tmp_path / "gone"))
    assert "does not exist" in resources.default_model_problem()
    assert [(o.label, o.is_default) for o in resources.list_models()] == [
        ("Other (b_other)", False), ("Main model (default)", False),
        (os.path.join("runs", "x", "ckpts", "best.ckpt"), False)]
    monkeypatch.setenv(resources.MODELS_DIR_ENV, str(tmp_path / "nowhere"))
    assert resources.list_models() == []


def test_model_key_changes_with_weights(tmp_path):
    bundle = _bundle(tmp_path / "m", "m")
    key = resources.model_key(bundle)
    os.utime(bundle / store.WEIGHTS_FILE, ns=(1, 1))
    assert resources.model_key(bundle) != key and resources.model_key(bundle).startswith(str(bundle.resolve()))


def test_model_dir_status(tmp_path):
    assert not store.describe_model_dir(tmp_path / "nope").available
    (tmp_path / store.WEIGHTS_FILE).write_bytes(b"")
    status = store.describe_model_dir(tmp_path)
    assert not status.available and "model_card.json" in status.reason
    (tmp_path / store.CARD_FILE).write_text("{not json")
    assert "not valid JSON" in store.describe_model_dir(tmp_path).reason
    (tmp_path / store.CARD_FILE).write_text(json.dumps({"name": "tiny"}))
    status = store.describe_model_dir(tmp_path)
    assert status.available and status.name == "tiny"


@pytest.mark.parametrize(("light", "words"), [("green", "Low risk"), ("yellow", "Medium risk"), ("red", "High risk"),
                                               ("grey", "Not assessable: retake"), (None, "Not analysed")])
def test_traffic_light_has_words_and_colour(light, words):
    markup = components.light_html(light)
    assert words in markup and "border-radius:50%" in markup
    assert components.LIGHTS.get(light, ("#9e9e9e",))[0] in markup


def test_card_header_puts_light_at_the_right():
    markup = components.card_header_html(_prediction("yellow"))
    assert "justify-content:space-between" in markup
    assert markup.index(">MEL<") < markup.index("dl-light-yellow") and "40%" not in markup  # no second number
    grey = components.card_header_html(_prediction("grey", model_light="red", flags=["blurred"]))
    assert "Not assessable: retake" in grey and "MEL" not in grey and "High risk" not in grey


def test_risk_explanation_shows_formula_and_numbers():
    cfg = RiskConfig(weights={"MEL": 1.5, "BCC": 1.3, "SCC": 1.0}, green_below=0.15, yellow_below=0.6)
    text = components.risk_explanation(_prediction(), cfg)
    assert "1.5 × P(MEL) + 1.3 × P(BCC) + 1 × P(SCC)" in text
    assert "1.5 × 0.400" in text and "**0.750**" in text and "Green below 0.150" in text
    assert "fixed policy" in text and "validation split" not in text
    chosen = components.risk_explanation(_prediction(), RiskConfig(green_below=0.15, yellow_below=0.6,
                                                                     chosen_on="validation split"))
    assert "chosen for this model on its validation split" in chosen


def test_suggestion_note_says_when_a_more_probable_diagnosis_was_not_suggested():
    pred = _prediction()
    assert max(pred.probabilities, key=pred.probabilities.get) == pred.top_class
    assert components.suggestion_note(pred) == ""
    probs = {**pred.probabilities, "NV": 0.55, "MEL": 0.2}
    note = components.suggestion_note(_prediction(probabilities=probs, top_class="MEL"))
    assert note.startswith("More probable: NV (melanocytic nevus), 55%.") and "weighs every diagnosis equally" in note
    # The reports carry the same note beside the suggestion.
    fields = dict(report_pdf.report_fields(_prediction(probabilities=probs, top_class="MEL")))
    assert fields["Suggested diagnosis"].endswith(note) and "probability 20.0%" in fields["Suggested diagnosis"]
    assert dict(report_pdf.report_fields(pred))["Suggested diagnosis"].endswith("probability 40.0%")


def test_an_implausible_suggestion_never_heads_the_result():
    """A rare class lifted by the balancing from 1.4% must not head a red lesion's card, viewer, CSV or report."""
    probs = {"MEL": 0.37, "NV": 0.38, "BCC": 0.1, "AK": 0.05, "BKL": 0.06, "DF": 0.026, "VASC": 0.014, "SCC": 0.02}
    pred = _prediction(probabilities=probs, top_class="VASC", top_probability=0.014)
    headline = components.diagnosis_headline(pred)
    assert (headline.title, headline.code, headline.probability) == ("Most probable diagnosis", "NV", 0.38)
    assert "VASC (vascular lesion), is only 1.4% probable" in headline.note
    assert ">NV<" in components.card_header_html(pred) and "VASC" not in components.card_header_html(pred)
    fields = dict(report_pdf.report_fields(pred))
    assert "Suggested diagnosis" not in fields and fields["Most probable diagnosis"].startswith(
        "melanocytic nevus (NV), probability 38.0%. The class-balanced suggestion")
    upload = SimpleNamespace(name="a.png", metadata={}, prediction=pred)
    lines = report.results_csv([upload], "M", "1").decode("utf-8-sig").splitlines()
    row = dict(zip(lines[0].split(","), next(csv.reader(lines[1:])), strict=True))
    assert (row["predicted_class"], row["class_balanced_suggestion"]) == ("NV", "VASC")
    # At the floor and above, the class-balanced suggestion leads (it finds rare diagnoses).
    floor = components.PLAUSIBLE_SUGGESTION
    lifted = {**probs, "VASC": floor, "NV": 0.38 - (floor - 0.014)}
    plausible = components.diagnosis_headline(_prediction(probabilities=lifted, top_class="VASC"))
    assert (plausible.title, plausible.code) == ("Suggested diagnosis", "VASC")


def test_malignancy_figure_and_class_table():
    fig = components.malignancy_figure(_prediction())
    assert list(fig.data[0].y) == ["Benign", "Malignant"] and list(fig.data[0].x) == [0.48, 0.52]
    table = components.class_table(_prediction())
    assert list(table["class"])[:2] == ["MEL", "NV"] and table["probability"].sum() == pytest.approx(1.0)
    # The class names are never cut at the chart's edge (BCC and SCC read alike once cut to "CC").
    for figure in (fig, components.class_figure(_prediction())):
        assert figure.layout.yaxis.automargin is True
    # Automargin alone measures a chart drawn in a collapsed expander (the class bars) at zero width:
    # the margin is set from the labels, so "MEL (malignant)" fits whole (at least 6 px per character).
    bars = components.class_figure(_prediction())
    longest = max(len(str(label)) for label in bars.data[0].y)
    assert bars.layout.margin.l >= 6 * longest + 10, (bars.layout.margin.l, longest)


def test_fit_image_and_thumbnail():
    image = np.zeros((300, 600, 3), np.uint8)
    assert components.fit_image(image, 200).shape == (100, 200, 3)
    assert components.fit_image(image, 1000) is image
    # A very wide picture keeps its short side: the app's scaling must not make it "too small".
    wide = np.zeros((160, 3200, 3), np.uint8)
    assert components.fit_image(wide, 1024, min_short=384) is wide
    assert components.fit_image(np.zeros((1000, 6000, 3), np.uint8), 1024, min_short=384).shape == (384, 2304, 3)
    assert components.fit_image(wide, 1024).shape == (51, 1024, 3)  # without the floor it would be
    thumb = Image.open(io.BytesIO(components.thumbnail_png(image)))
    assert max(thumb.size) == 240 and not thumb.getexif()


def test_report_formats_and_errors():
    image = np.full((120, 160, 3), 180, np.uint8)
    kwargs = dict(image_name="a.jpg", model_name="M", model_version="2", cam_target="MEL",
                  metadata={"age_approx": 40, "sex": None}, risk_cfg=RiskConfig(weights={"MEL": 1.5}))
    png = report.build_report(image, image, _prediction(flags=["blurred"], flag_reasons={"blurred": "soft"}),
                              **kwargs)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (1240, 1754) and not picture.getexif()
    assert report.build_report(image, None, _prediction(), fmt="pdf", **kwargs).startswith(b"%PDF")
    with pytest.raises(ValueError, match="format"):
        report.build_report(image, None, _prediction(), fmt="jpeg", **kwargs)


def test_png_report_draws_every_diagnosis_even_with_a_long_result(monkeypatch):
    from PIL import ImageDraw

    drawn: list[str] = []
    real_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **k: drawn.append(str(text)) or real_text(self, xy, text, *a, **k))
    image = np.full((450, 600, 3), 170, np.uint8)
    meaning = ("On the test split, 22.6% of yellow lesions were malignant; yellow or red caught 92.9% of "
               "malignant lesions, with 72.9% of benign lesions green. ") * 2
    png = report.build_report(image, image, _prediction("yellow", risk=0.3), image_name="x" * 180 + ".jpg",
                              model_name="M", model_version="2", cam_target="MEL", light_meaning=meaning,
                              metadata={"age_approx": 55, "sex": "female", "anatom_site_general": "back"},
                              patient_id="P-1", lesion_id="L-2",
                              risk_cfg=RiskConfig(weights={"MEL": 1.0, "BCC": 1.0, "SCC": 1.0}))
    assert Image.open(io.BytesIO(png)).size == (1240, 1754)  # still one A4 page
    text = "\n".join(drawn)
    for code in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"):
        assert f"({code})" in text, code
    assert "Not drawn for lack of room" not in text
    assert len([line for line in drawn if "xxxx" in line]) >= 2  # the long name wraps instead of running off


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


@pytest.mark.parametrize("unicode_font", [True, False])
def test_pdf_report_never_drops_a_character_of_a_name_or_id(monkeypatch, unicode_font):
    if not unicode_font:
        monkeypatch.setattr(report_pdf, "_font_files", lambda: None)  # a machine without DejaVu: Helvetica
    image = np.full((60, 80, 3), 150, np.uint8)
    data = report.build_report(image, None, _prediction("red"), fmt="pdf", image_name="Åsa_李.png",
                               model_name="M", model_version="1", patient_id="患者-7")
    text = _pdf_text(data)
    # No CJK glyph in the font: each character is written as its code point, never silently left out.
    assert "[U+60A3][U+8005]-7" in text and "Patient ID -7" not in text.replace("\n", " ")
    assert "Åsa_[U+674E].png" in text


@pytest.mark.parametrize("fmt", ["pdf", "png"])
def test_report_carries_the_clinicians_decision_and_note(monkeypatch, fmt):
    from PIL import ImageDraw

    drawn: list[str] = []
    real_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **k: drawn.append(str(text)) or real_text(self, xy, text, *a, **k))
    image = np.full((60, 80, 3), 150, np.uint8)
    data = report.build_report(image, None, _prediction("red"), fmt=fmt, image_name="a.jpg", model_name="M",
                               model_version="1", decision="Excise", note="irregular border, grown since May")
    text = _pdf_text(data) if fmt == "pdf" else "\n".join(drawn)
    assert "Excise" in text and "irregular border, grown since May" in text
    blank = report.build_report(image, None, _prediction("red"), fmt=fmt, image_name="a.jpg", model_name="M",
                                model_version="1")
    assert fmt == "png" or "not recorded" in _pdf_text(blank)


def test_a_risk_score_at_the_top_of_its_scale_says_so():
    cfg = RiskConfig(green_below=0.126, yellow_below=0.418)
    capped = _prediction("red", risk=1.0)
    assert "top of the scale" in components.risk_headline(capped, cfg)
    assert "top of the scale" in dict(report_pdf.report_fields(capped, risk_cfg=cfg))["Risk score"]
    assert "top of the scale" not in components.risk_headline(_prediction("red", risk=0.75), cfg)


def test_pdf_report_has_a_text_layer_with_human_field_names():
    from pypdf import PdfReader

    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    data = report.build_report(image, 255 - image, _prediction("red"), fmt="pdf", image_name="lesion_7.jpg",
                               model_name="Tiny", model_version="3", cam_target="MEL",
                               metadata={"age_approx": 55, "sex": "female"},
                               risk_cfg=RiskConfig(weights={"MEL": 1.5}, green_below=0.126, yellow_below=0.418,
                                                   chosen_on="validation split"),
                               light_meaning="Red: on this model's test split, 40% of red lesions were malignant.")
    text = " ".join(_pdf_text(data).split())
    # The printed risk score says what it is measured against: the model's thresholds and how they were chosen.
    assert "Risk score 0.750 on a scale of 0 to 1. Green below 0.126, yellow from 0.126 to below 0.418, red from " \
           "0.418 (chosen for this model on its validation split" in text
    for name in ("Suggested diagnosis", "Probability of malignancy", "Risk light", "What the light means",
                 "Estimated Breslow thickness", "Image quality", "Patient metadata"):
        assert name in text, name
    assert "melanoma (MEL), probability 40.0%" in text and "lesion_7.jpg" in text
    assert "Red: high risk" in text and "40% of red lesions were malignant" in text and "52.0%" in text
    assert "Patient ID not given" in text and "Lesion ID not given" in text
    assert "Estimated Breslow thickness band 1-2 mm (applies only if" in text and "1.30" not in text
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 2  # the image and its Grad-CAM
    assert set(reader.metadata) <= {"/Title", "/Creator", "/Producer", "/CreationDate"}


def test_pdf_report_of_a_not_assessable_image_says_so():
    from pypdf import PdfReader

    image = np.full((64, 64, 3), 20, np.uint8)
    pred = _prediction("grey", model_light="red", flags=["too_dark"],
                       flag_reasons={"too_dark": "The image is too dark or blank to assess: retake it."})
    kwargs = dict(fmt="pdf", image_name="x.jpg", model_name="M", model_version="1", patient_id="P-17",
                  lesion_id="back 3")
    # As on screen, the model's result is left out unless the clinician asked to see it anyway.
    data = report.build_report(image, 255 - image, pred, **kwargs)
    text = " ".join(_pdf_text(data).split())
    assert "Not assessable: retake the image" in text and "Grey: not assessable" in text
    assert "The image is too dark or blank to assess" in text and "Model's result Not reported" in text
    assert "Patient ID P-17" in text and "Lesion ID back 3" in text
    for hidden in ("Suggested diagnosis", "Red: high risk", "Risk score", "Breslow", "40.0%"):
        assert hidden not in text, hidden
    assert len(PdfReader(io.BytesIO(data)).pages[0].images) == 1  # the image, not its Grad-CAM
    text = " ".join(_pdf_text(report.build_report(image, None, pred, show_model_result=True, **kwargs)).split())
    assert text.index("Not assessable: retake the image") < text.index("Suggested diagnosis")
    assert "Grey: not assessable" in text and "Red: high risk" in text  # the model's light, named as such
    assert "The image is too dark or blank to assess" in text


def test_png_report_of_a_not_assessable_image_leaves_the_result_out_unless_shown():
    image = np.full((64, 64, 3), 20, np.uint8)
    pred = _prediction("grey", model_light="red", flags=["too_dark"], flag_reasons={"too_dark": "Too dark."})
    fields = dict(report_pdf.report_fields(pred, patient_id="P-1"))
    assert "Suggested diagnosis" not in fields and fields["Patient ID"] == "P-1" and "Red" not in fields["Risk light"]
    shown = dict(report_pdf.report_fields(pred, show_model_result=True))
    assert shown["Suggested diagnosis"].startswith("melanoma") and "Red: high risk" in shown["Risk light"]
    hidden_png = report.render_report(image, 255 - image, pred, image_name="x", model_name="M", model_version="1")
    shown_png = report.render_report(image, 255 - image, pred, image_name="x", model_name="M", model_version="1",
                                     show_model_result=True)
    assert hidden_png.size == shown_png.size and hidden_png.tobytes() != shown_png.tobytes()


def test_report_thickness_is_a_band_muted_when_melanoma_is_unlikely():
    likely = dict(report_pdf.report_fields(_prediction("red")))["Estimated Breslow thickness"]
    assert likely.startswith("band 1-2 mm") and "1.30" not in likely
    nevus = _prediction("green", probabilities={"NV": 0.9, "BKL": 0.05, "MEL": 0.05}, top_class="NV")
    muted = dict(report_pdf.report_fields(nevus))["Estimated Breslow thickness"]
    assert muted.startswith("melanoma unlikely here (probability 5.0%)") and "band 1-2 mm" in muted
    # A suggested melanoma is never "unlikely", however low P(MEL) (the suggestion is class-balanced).
    suggested = _prediction("yellow", probabilities={"NV": 0.6, "BKL": 0.19, "MEL": 0.12}, top_class="MEL")
    assert dict(report_pdf.report_fields(suggested))["Estimated Breslow thickness"].startswith("band 1-2 mm")


def test_results_csv_risk_never_reads_as_the_neighbouring_light():
    cfg = RiskConfig(green_below=0.126, yellow_below=0.41797)
    near = SimpleNamespace(name="a.png", metadata={}, prediction=_prediction("yellow", risk=0.4179))
    row = next(csv.DictReader(io.StringIO(report.results_csv([near], "M", "1", risk_cfg=cfg).decode("utf-8-sig"))))
    assert row["risk"] == "0.4179" and row["traffic_light"] == "yellow"  # 0.418 would read as red
    far = SimpleNamespace(name="b.png", metadata={}, prediction=_prediction("yellow", risk=0.3))
    row = next(csv.DictReader(io.StringIO(report.results_csv([far], "M", "1", risk_cfg=cfg).decode("utf-8-sig"))))
    assert row["risk"] == "0.300"


def test_results_csv_opens_in_a_spreadsheet_with_non_latin_names():
    done = SimpleNamespace(name="Åsa_李.png", metadata={}, prediction=_prediction(), id="u1", decision="", note="",
                           patient_id="", lesion_id="")
    data = report.results_csv([done], "M", "1")
    assert data.startswith(b"\xef\xbb\xbf")  # the byte-order mark spreadsheets read the encoding from
    assert "Åsa_李.png" in data.decode("utf-8-sig")


def test_results_csv_columns_rounding_and_review_fields():
    done = SimpleNamespace(name="+a.png", metadata={"age_approx": 30, "sex": None, "anatom_site_general": None},
                           prediction=_prediction("grey", model_light="red", risk=0.123456789, malignant=0.52,
                                                  probabilities={"MEL": 0.123456789, "NV": 0.876543211},
                                                  flags=["blurred"],
                                                  flag_reasons={"blurred": "The image is too blurred to assess."}),
                           decision="excise", note="seen by Dr A", lesion_id="L1")
    waiting = SimpleNamespace(name="b.png", metadata={}, prediction=None)
    lines = report.results_csv([done, waiting], "M", "1").decode("utf-8-sig").splitlines()
    assert len(lines) == 2
    header = lines[0].split(",")
    assert header[:5] == ["image", "patient_id", "lesion_id", "predicted_class", "predicted_diagnosis"]
    assert {"traffic_light", "model_light", "quality_flags", "decision", "note", "malignant", "risk"} <= set(header)
    row = dict(zip(header, next(csv.reader(lines[1:])), strict=True))
    assert row["image"] == "'+a.png" and row["patient_id"] == "" and row["lesion_id"] == "L1"
    # Not assessable: the light, the reasons and the review, but none of the model's result unless shown.
    assert all(row[c] == "" for c in report.RESULT_COLUMNS) and row["traffic_light"] == "grey"
    assert row["quality_flags"] == "The image is too blurred to assess." and row["decision"] == "excise"
    done.id = "u1"
    lines = report.results_csv([done, waiting], "M", "1", shown={"u1"}).decode("utf-8-sig").splitlines()
    row = dict(zip(header, next(csv.reader(lines[1:])), strict=True))
    assert (row["predicted_class"], row["predicted_diagnosis"]) == ("MEL", "melanoma")
    assert row["MEL"] == "0.123" and row["NV"] == "0.877" and row["DF"] == "0.000" and row["risk"] == "0.123"
    assert row["malignant"] == "0.520" and row["thickness_mm"] == "1.30"
    assert (row["traffic_light"], row["model_light"]) == ("grey", "red")
    assert row["quality_flags"] == "The image is too blurred to assess."
    assert (row["decision"], row["note"], row["age_approx"], row["model"]) == ("excise", "seen by Dr A", "30", "M")
    plain = SimpleNamespace(name="c.png", metadata={}, prediction=_prediction("green"))
    row = dict(zip(header, next(csv.reader(report.results_csv([plain], "M", "1").decode("utf-8-sig").splitlines()[1:])),
                   strict=True))
    assert row["decision"] == "" and row["note"] == "" and row["traffic_light"] == row["model_light"] == "green"


def test_results_csv_keeps_the_review_of_an_image_the_model_could_not_analyse():
    failed = SimpleNamespace(name="x.png", metadata={"sex": "female"}, prediction=None, decision="biopsy",
                             note="", patient_id="P-1", lesion_id="", failure="x.png: could not be analysed: boom")
    waiting = SimpleNamespace(name="b.png", metadata={}, prediction=None, decision="", note="", patient_id="",
                              lesion_id="", failure="")
    rows = list(csv.DictReader(io.StringIO(report.results_csv([failed, waiting], "M", "1").decode("utf-8-sig"))))
    assert [r["image"] for r in rows] == ["x.png"]  # the unreviewed, unanalysed image has nothing to export
    row = rows[0]
    assert (row["decision"], row["patient_id"], row["sex"]) == ("biopsy", "P-1", "female")
    assert row["quality_flags"] == "x.png: could not be analysed: boom"
    assert all(row[c] == "" for c in (*report.RESULT_COLUMNS, "traffic_light"))


def test_bars_benign_neutral_malignant_one_muted_warm_colour():
    fig = components.malignancy_figure(_prediction())
    assert list(fig.data[0].marker.color) == [components.BENIGN_COLOUR, components.MALIGNANT_COLOUR]
    bars = components.class_figure(_prediction())
    colours = dict(zip((label.split()[0] for label in bars.data[0].y), bars.data[0].marker.color, strict=True))
    assert {colours[c] for c in ("MEL", "BCC", "SCC")} == {components.MALIGNANT_COLOUR}
    assert {colours[c] for c in ("NV", "BKL", "AK", "DF", "VASC")} == {components.BENIGN_COLOUR}
    assert "#c62828" not in (*colours.values(), *fig.data[0].marker.color)  # no alarm red on any bar


def test_risk_headline_is_one_number_with_its_red_threshold():
    cfg = SimpleNamespace(weights={"MEL": 1.5}, green_below=0.04, yellow_below=0.35)
    assert components.risk_headline(_prediction(risk=0.42), cfg) == "Risk score 0.420 (red from 0.350)"
    # Near a threshold the numbers get the decimals that keep them in agreement with the light.
    near = SimpleNamespace(weights={"MEL": 1.5}, green_below=0.126, yellow_below=0.4181)
    assert components.risk_headline(_prediction(risk=0.4178), near) == "Risk score 0.4178 (red from 0.4181)"


def test_band_accuracy_sentence_from_the_card():

    card = {"test_metrics": {"thickness_band_accuracy": {"value": 0.62, "lo": 0.5, "hi": 0.71, "n": 40}}}
    assert band_accuracy_sentence(card) == ("The model's band was correct in 62% of test melanomas with a known "
                                            "thickness (95% interval 50%-71%), n = 40.")
    assert band_accuracy_sentence({"test_metrics": {"thickness_band_accuracy": float("nan")}}) == ""
    assert band_accuracy_sentence({}) == ""


def test_report_overlay_greys_the_border_the_model_did_not_see():
    rng = np.random.default_rng(5)
    image = rng.integers(60, 200, size=(60, 80, 3), dtype=np.uint8)  # 4:3: the centre crop is 60 x 60
    image[..., 0] = 220  # a strongly red picture, so greying is visible as lost saturation
    cold = np.zeros((8, 8), dtype=np.float32)  # no attention anywhere: the overlay leaves what was seen alone
    shown = report.report_overlay(image, cold, 0.4, {"img_size": 32})
    np.testing.assert_array_equal(shown[:, 12:68], image[:, 12:68])  # inside the crop (about 10-70): unchanged
    border = np.concatenate([shown[:, :8], shown[:, 72:]], axis=1).astype(int)
    original = np.concatenate([image[:, :8], image[:, 72:]], axis=1).astype(int)
    spread = lambda px: (px.max(axis=-1) - px.min(axis=-1)).mean()  # noqa: E731
    assert spread(border) < 0.8 * spread(original)  # the unseen margins are washed towards grey
    np.testing.assert_array_equal(report.report_overlay(image, cold, 0.4, None), image)  # no preprocessing known


def test_model_warnings_say_what_a_raw_model_lacks():
    quality = SimpleNamespace(ood_enabled=True)
    chosen = RiskConfig(chosen_on="validation split")
    bundle = SimpleNamespace(card={"calibration": {"method": "temperature"}}, feature_stats=object(),
                             quality=quality, risk=chosen)
    assert components.model_warnings(bundle) == []
    checkpoint = SimpleNamespace(card={"calibration": {"method": "none (raw checkpoint)"}}, feature_stats=None,
                                 quality=quality, risk=RiskConfig())
    words = components.model_warnings(checkpoint)
    assert len(words) == 3 and "no check for images unlike its training images" in words[0]
    assert "fixed policy" in words[1] and "not calibrated" in words[2]
    switched_off = SimpleNamespace(card={}, feature_stats=object(), quality=SimpleNamespace(ood_enabled=False),
                                   risk=chosen)
    assert len(components.model_warnings(switched_off)) == 1


def test_a_long_light_wraps_inside_its_card_and_the_viewer_keeps_it_on_the_scores_line():
    grey = _prediction("grey", flags=["blurred"], flag_reasons={"blurred": "Too blurred."})
    head = components.card_header_html(grey)
    assert "flex-wrap:wrap" in head and "white-space:normal" in head  # never past a 148 px card's edge
    assert "white-space:nowrap" in components.light_html("grey")  # elsewhere the words stay together


def test_the_sidebar_says_what_calibration_and_date_mean_in_words():
    card = {"name": "m", "version": "1", "created": "2026-12-04T19:39:09+00:00", "preprocessing": {"img_size": 192},
            "config": {"model": {"backbone": "mobilenetv2_100"}}}
    per_class = components.model_summary_lines({**card, "calibration": {"temperature": 0.775,
                                                                        "class_offsets": [0.1] * 8}}, True)
    assert "Made on 2026-12-04" in per_class and not any("T19:39" in line for line in per_class)
    assert any(line.startswith("Probabilities calibrated per diagnosis") for line in per_class)
    assert not any("temperature" in line.lower() for line in per_class)  # no bare developer figure
    single = components.model_summary_lines({**card, "calibration": {"temperature": 0.775}}, False)
    assert any("one temperature, 0.775" in line for line in single) and "Inputs: image only" in single
    raw = components.model_summary_lines({**card, "calibration": {"method": "none"}}, False)
    assert any(line.startswith("Calibration: none") for line in raw)


def test_a_decision_whose_result_failed_on_reanalysis_says_which_result_it_was_made_on():
    reviewed = (("red", "MEL"), "red, risk score 0.750, leading with MEL (melanoma)")
    failed = SimpleNamespace(name="a.png", metadata={}, prediction=None, failure="a.png: could not be analysed",
                             decision="Excise", note="", reviewed_on=reviewed, changed_since_review="")
    lines = report.results_csv([failed], "M", "1").decode("utf-8-sig").splitlines()
    row = dict(zip(lines[0].split(","), next(csv.reader(lines[1:])), strict=True))
    assert row["decision"] == "Excise" and row["decision_on_earlier_result"] == reviewed[1]
    assert report.decision_words(failed) == f"Excise (recorded on an earlier result: {reviewed[1]})"
    same = SimpleNamespace(**{**vars(failed), "prediction": _prediction(), "failure": ""})
    assert report.earlier_result(same) == "" and report.decision_words(same) == "Excise"
