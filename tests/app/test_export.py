"""Export: the results table as CSV and a per-image report (PNG, PDF) without EXIF, made in memory on request."""

from __future__ import annotations

import csv
import io

import pytest
from PIL import Image

from app.components import diagnosis_headline
from app.report import EXPORT_COLUMNS
from backend.inference.predictor import Predictor
from tests.app.conftest import MIME, image_bytes, new_app, session_uploads, texts, upload
from tests.conftest import download_file


def download(at, media: list, key: str) -> bytes:
    """The bytes of :func:`download_file`."""
    return download_file(at, media, key).content


@pytest.fixture
def disk_writes(monkeypatch) -> list:
    """Record every file opened for writing (``open`` in a write mode, ``os.open`` with O_CREAT/O_WRONLY/O_RDWR)."""
    import builtins
    import os

    writes: list = []
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            writes.append(str(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    return writes


def test_csv_and_reports_exif_free_nothing_on_disk(app_env, media, disk_writes):

    at = new_app().run()
    jpeg = image_bytes(41, "JPEG", size=96, exif=True)
    assert b"SecretCamMaker" in jpeg and Image.open(io.BytesIO(jpeg)).getexif()
    upload(at, ("=HYPERLINK(evil).jpg", jpeg, MIME["JPEG"]), ("plain.png", image_bytes(42), MIME["PNG"]))
    assert not at.exception
    labels = {b.key: b.label for b in at.get("download_button")}
    assert labels == {"export_csv": "Results table (CSV)", "export_png": "Report of selected image (PNG)",
                      "export_pdf": "Report of selected image (PDF)"}

    rows = list(csv.DictReader(io.StringIO(download(at, media, "export_csv").decode("utf-8-sig"))))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert [r["image"] for r in rows] == ["'=HYPERLINK(evil).jpg", "plain.png"]  # no spreadsheet formula
    uploads = list(session_uploads(at).values())
    for row, upload_ in zip(rows, uploads, strict=True):
        assert row["MEL"] == f"{upload_.prediction.probabilities['MEL']:.3f}"
        headline = diagnosis_headline(upload_.prediction)  # what the screen leads with
        assert row["predicted_class"] == headline.code and row["decision"] == row["note"] == ""
        assert row["class_balanced_suggestion"] == upload_.prediction.top_class
        assert row["traffic_light"] == upload_.prediction.traffic_light and row["model"] == "Tiny fusion"
        assert row["model_version"] == "test-1"

    png = download(at, media, "export_png")
    assert png.startswith(b"\x89PNG")
    report = Image.open(io.BytesIO(png))
    assert report.size == (1240, 1754) and not report.getexif() and "exif" not in report.info
    assert b"SecretCamMaker" not in png and b"PatientPhone" not in png and b"eXIf" not in png
    pdf = download(at, media, "export_pdf")
    assert pdf.startswith(b"%PDF") and b"Exif" not in pdf and b"SecretCamMaker" not in pdf

    # The selected image's report follows the selection.
    at.toggle(key="cam_on").set_value(True).run()
    at.button(key=f"select_{uploads[1].id}").click().run()
    assert not at.exception
    assert download_file(at, media, "export_png").filename == "plain_dermalens_report.png"
    assert download_file(at, media, "export_csv").filename == "dermalens_results.csv"
    # Upload, prediction, Grad-CAM and exports all stayed in memory.
    assert disk_writes == []


def test_report_uses_cached_grad_cam_of_chosen_target(app_env, media, monkeypatch):

    at = new_app().run()
    upload(at, ("a.png", image_bytes(43, size=96), MIME["PNG"]))
    at.toggle(key="cam_on").set_value(True).run()
    at.selectbox(key="cam_target").set_value("thickness").run()
    calls = []
    monkeypatch.setattr(Predictor, "explain", lambda *a, **kw: calls.append(a) or None)
    png = download(at, media, "export_png")
    assert calls == []  # the heatmap shown is the one in the report
    assert Image.open(io.BytesIO(png)).size == (1240, 1754)


def test_csv_keeps_the_decision_of_an_image_the_model_failed_on(app_env, media, monkeypatch):
    original = Predictor.predict

    def picky(self, images, *args, **kwargs):
        if any(item.name == "cursed.png" for item in images):
            raise RuntimeError("backend bug")
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", picky)
    at = new_app().run()
    upload(at, ("fine.png", image_bytes(13), MIME["PNG"]), ("cursed.png", image_bytes(14), MIME["PNG"]))
    _, cursed = session_uploads(at).values()
    cursed.decision, cursed.note = "Biopsy", "raised edge"
    at.button(key=f"select_{cursed.id}").click().run()
    assert not at.exception
    # The viewer says what happened, not "load a model".
    assert "cursed.png: could not be analysed: unexpected error (backend bug)" in texts(at.main.error)
    assert "No prediction yet" not in texts(at.main.info)
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(download(at, media, "export_csv").decode("utf-8-sig")))}
    assert set(rows) == {"fine.png", "cursed.png"}
    assert rows["cursed.png"]["decision"] == "Biopsy" and rows["cursed.png"]["note"] == "raised edge"
    assert rows["cursed.png"]["risk"] == "" and "could not be analysed" in rows["cursed.png"]["quality_flags"]
    assert rows["fine.png"]["risk"] != ""


def test_csv_is_offered_when_every_image_failed_but_one_holds_a_review(app_env, media, monkeypatch):
    def broken(self, images, *args, **kwargs):
        raise RuntimeError("backend bug")

    monkeypatch.setattr(Predictor, "predict", broken)
    at = new_app().run()
    upload(at, ("cursed.png", image_bytes(14), MIME["PNG"]))
    # Offered at once: the table says which image could not be analysed and why.
    rows = list(csv.DictReader(io.StringIO(download(at, media, "export_csv").decode("utf-8-sig"))))
    assert [(r["image"], r["note"]) for r in rows] == [("cursed.png", "")]
    assert "could not be analysed" in rows[0]["quality_flags"]
    (cursed,) = session_uploads(at).values()
    cursed.note = "recheck in 3 months"
    at.run()
    rows = list(csv.DictReader(io.StringIO(download(at, media, "export_csv").decode("utf-8-sig"))))
    assert [(r["image"], r["note"]) for r in rows] == [("cursed.png", "recheck in 3 months")]
