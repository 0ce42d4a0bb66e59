"""Exports of the dashboard, built in memory: the results table (CSV) and a one-page report per image.

The CSV has one row per analysed image (:data:`EXPORT_COLUMNS`): its name, patient and lesion IDs
when known, the diagnosis the screen leads with (code and name; ``app.components.diagnosis_headline``)
and the class-balanced suggestion, probabilities and risk to 3 decimals, the
light (``grey`` when not assessable, with the model's own light beside it), the quality reasons
in words and the clinician's decision and note (empty until reviewed), with the result the decision
was recorded on when the current result differs from it (``decision_on_earlier_result``).

The report holds the image, its Grad-CAM overlay, the diagnosis the screen leads with, the probability of
malignancy, the risk light and what it means, the Breslow thickness estimate, the quality reasons,
the model's name and version and the time it was made. The PDF has a real text layer
(``app.report_pdf``); the PNG is drawn with Pillow. Both are made from pixel arrays, so no EXIF or
other metadata of the uploaded file (camera, GPS, dates) can reach them; nothing touches the disk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from app.components import CLASS_NAMES, diagnosis_headline, quality_reasons
from app.report_pdf import pdf_report, printable, report_fields, result_hidden
from app.state import has_review
from backend.data.schema import DIAGNOSES
from backend.inference.explain import overlay, seen_mask
from backend.inference.risk import format_risk, risk_decimals

#: Columns of the dashboard's results table, in order (probabilities under the diagnosis codes).
EXPORT_COLUMNS: tuple[str, ...] = (
    "image", "patient_id", "lesion_id", "predicted_class", "predicted_diagnosis", "class_balanced_suggestion",
    *DIAGNOSES, "malignant", "risk",
    "traffic_light", "model_light", "quality_flags", "thickness_mm", "thickness_band", "age_approx", "sex",
    "anatom_site_general", "metadata_used", "decision", "decision_on_earlier_result", "note", "model", "model_version",
)
#: Decimals of probabilities and risk in the results table.
CSV_DECIMALS = 3
REPORT_FORMATS: dict[str, str] = {"png": "image/png", "pdf": "application/pdf"}
_PAGE = (1240, 1754)  # A4 at 150 dpi
#: Smallest height of the report's pictures, in pixels, when the result needs the room.
_MIN_PICTURE = 260
_LIGHT_RGB = {"green": (46, 125, 50), "yellow": (249, 168, 37), "red": (198, 40, 40), "grey": (117, 117, 117)}
_FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_BOLD_FILES = ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _safe_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (a file named ``=cmd|...`` stays text)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


#: Columns of the model's result, left empty for a not-assessable image unless its result was shown.
RESULT_COLUMNS: tuple[str, ...] = ("predicted_class", "predicted_diagnosis", "class_balanced_suggestion", *DIAGNOSES,
                                   "malignant", "risk",
                                   "model_light", "thickness_mm", "thickness_band")


def decision_words(upload: Any) -> str:
    """The clinician's decision as exported, saying so when it was recorded on an earlier, different result."""
    decision = str(getattr(upload, "decision", "") or "")
    earlier = earlier_result(upload)
    return f"{decision} (recorded on an earlier result: {earlier})" if earlier else decision


def export_row(upload: Any, model_name: str, model_version: str, show_model_result: bool = False,
               risk_cfg: Any = None) -> dict[str, Any]:
    """One results-table row (:data:`EXPORT_COLUMNS`) of an analysed upload, numbers rounded.

    The risk has :data:`CSV_DECIMALS` decimals, or more within rounding of one of ``risk_cfg``'s
    thresholds (``risk_decimals``), so the number never reads as the neighbouring light.

    Patient and lesion IDs, the clinician's decision and note are read when the upload has them
    (``getattr``), else left empty. A not-assessable (grey) image's :data:`RESULT_COLUMNS` stay empty
    unless ``show_model_result`` (the clinician asked to see its result), as on screen and in reports.
    """
    pred = upload.prediction
    headline = diagnosis_headline(pred)
    meta = getattr(upload, "metadata", None) or {}
    row: dict[str, Any] = {
        "image": upload.name,
        "patient_id": _text(getattr(upload, "patient_id", "") or meta.get("patient_id")),
        "lesion_id": _text(getattr(upload, "lesion_id", "") or meta.get("lesion_id")),
        "predicted_class": headline.code,
        "predicted_diagnosis": CLASS_NAMES.get(headline.code, headline.code),
        "class_balanced_suggestion": pred.top_class,
    }
    row.update({code: f"{float(pred.probabilities.get(code, 0.0)):.{CSV_DECIMALS}f}" for code in DIAGNOSES})
    row.update({
        "malignant": f"{pred.malignant:.{CSV_DECIMALS}f}",
        "risk": format_risk(pred.risk, max(CSV_DECIMALS, risk_decimals(pred.risk, risk_cfg))),
        "traffic_light": pred.traffic_light, "model_light": getattr(pred, "model_light", "") or pred.traffic_light,
        "quality_flags": " ".join(quality_reasons(pred)),
        "thickness_mm": f"{pred.thickness_mm:.2f}", "thickness_band": pred.thickness_band,
    })
    if result_hidden(pred, show_model_result):
        row.update(dict.fromkeys(RESULT_COLUMNS, ""))
    row.update({k: _text(meta.get(k)) for k in ("age_approx", "sex", "anatom_site_general")})
    row.update({"metadata_used": pred.metadata_used, "decision": _text(getattr(upload, "decision", "")),
                "decision_on_earlier_result": earlier_result(upload),
                "note": _text(getattr(upload, "note", "")), "model": model_name, "model_version": model_version})
    return row


def earlier_result(upload: Any) -> str:
    """The result a decision was recorded on, when the current result differs from it or failed ("" otherwise)."""
    reviewed_on = getattr(upload, "reviewed_on", None)
    if not getattr(upload, "decision", "") or not reviewed_on:
        return ""
    changed = getattr(upload, "changed_since_review", "") or getattr(upload, "prediction", None) is None
    return str(reviewed_on[1]) if changed else ""


def unanalysed_row(upload: Any, model_name: str, model_version: str) -> dict[str, Any]:
    """A results-table row of an image without a result: its review and IDs, and why it has no result.

    A clinician's decision or note on an image the model could not analyse is work that must reach
    the export as well; the result columns stay empty and ``quality_flags`` says why.
    """
    meta = getattr(upload, "metadata", None) or {}
    row: dict[str, Any] = dict.fromkeys(EXPORT_COLUMNS, "")
    row.update({
        "image": upload.name, "patient_id": _text(getattr(upload, "patient_id", "")),
        "lesion_id": _text(getattr(upload, "lesion_id", "")),
        "quality_flags": getattr(upload, "failure", "") or "not analysed by this model",
        **{k: _text(meta.get(k)) for k in ("age_approx", "sex", "anatom_site_general")},
        "decision": _text(getattr(upload, "decision", "")), "decision_on_earlier_result": earlier_result(upload),
        "note": _text(getattr(upload, "note", "")), "model": model_name, "model_version": model_version,
    })
    return row


def results_csv(uploads: Iterable[Any], model_name: str, model_version: str,
                shown: Collection[str] = (), is_current: Callable[[Any], bool] | None = None,
                risk_cfg: Any = None) -> bytes:
    """The session's predictions as CSV (:data:`EXPORT_COLUMNS`), one row per analysed image.

    Args:
        uploads: ``app.state.Upload`` objects; one without a prediction is exported only when it holds
            review work (decision, note, IDs) or a failure, with empty result columns.
        model_name: Name of the model that made the predictions.
        model_version: Its version.
        shown: Ids of not-assessable uploads whose result the clinician asked to see (exported too).
        is_current: Whether an upload's prediction is this model's for its current metadata; one that
            is not (left from another model) is exported without results. None: every prediction is.
        risk_cfg: The model's ``RiskConfig`` (how many decimals keep each risk on its light's side).
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for upload in uploads:
        if upload.prediction is not None and (is_current is None or is_current(upload)):
            row = export_row(upload, model_name, model_version, getattr(upload, "id", None) in shown, risk_cfg)
        elif has_review(upload) or getattr(upload, "failure", ""):
            row = unanalysed_row(upload, model_name, model_version)
        else:
            continue
        writer.writerow({k: _safe_cell(v) for k, v in row.items()})
    # With a byte-order mark, so a spreadsheet opened by double-click reads accented and non-Latin names right.
    return out.getvalue().encode("utf-8-sig")


def _font(size: int, bold: bool = False) -> Any:
    from PIL import ImageFont

    for name in _BOLD_FILES if bold else _FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _paste_fitted(canvas: Any, image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Paste an RGB array into ``box`` (left, top, width, height), scaled to fit and centred."""
    from PIL import Image

    left, top, width, height = box
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))  # pixels only: nothing of the file survives
    scale = min(width / picture.width, height / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.LANCZOS)
    canvas.paste(picture, (left + (width - size[0]) // 2, top + (height - size[1]) // 2))


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width``: at spaces, and inside a word too long for a line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words, line = paragraph.split(), ""
        for word in words:
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=font) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            while draw.textlength(word, font=font) > width:  # a file name without spaces, say
                cut = next((i for i in range(len(word), 0, -1) if draw.textlength(word[:i], font=font) <= width), 1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def render_report(
    image: np.ndarray,
    overlay: np.ndarray | None,
    prediction: Any,
    *,
    image_name: str,
    model_name: str,
    model_version: str,
    cam_target: str = "",
    metadata: dict[str, Any] | None = None,
    risk_cfg: Any = None,
    created: datetime | None = None,
    light_meaning: str = "",
    patient_id: str = "",
    lesion_id: str = "",
    show_model_result: bool = False,
    decision: str = "",
    note: str = "",
) -> Any:
    """Draw the one-page report as a Pillow RGB image (see :func:`build_report`)."""
    from PIL import Image, ImageDraw


    created = created or datetime.now(timezone.utc)
    page = Image.new("RGB", _PAGE, "white")
    draw = ImageDraw.Draw(page)
    title, head, body, small = _font(44, True), _font(28, True), _font(24), _font(20)
    margin, width = 70, _PAGE[0] - 140
    y = 60
    draw.text((margin, y), "DermaLens lesion report", font=title, fill=(20, 20, 20))
    y += 70
    for text in (f"Image: {printable(image_name)}",
                 f"Model: {printable(model_name)} (version {printable(model_version, 40)})",
                 f"Generated: {created.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}"):
        for line in _wrap(draw, text, body, width):  # a long file name wraps instead of running off the page
            draw.text((margin, y), line, font=body, fill=(40, 40, 40))
            y += 34
    y += 6
    for line in _wrap(draw, "Decision support, not a diagnosis: to be interpreted by a qualified clinician.",
                      small, width):
        draw.text((margin, y), line, font=small, fill=(150, 30, 30))
        y += 26
    y += 14

    hidden = result_hidden(prediction, show_model_result)
    if hidden:
        overlay = None  # a Grad-CAM is part of the result the report leaves out
    pred = prediction
    fields = report_fields(pred, metadata, light_meaning, patient_id=patient_id, lesion_id=lesion_id,
                           show_model_result=show_model_result, risk_cfg=risk_cfg, decision=decision, note=note)
    weights = dict(risk_cfg.weights) if risk_cfg is not None and not hidden else {}
    # Everything below the pictures must fit on the page, every diagnosis included: the pictures
    # give up height (down to _MIN_PICTURE) before any line of the result is left out.
    below = (44 if pred.traffic_light == "grey" else 0) + sum(
        32 * len(_wrap(draw, f"{name}: {value}", body, width - 40)) + 6 for name, value in fields)
    if not hidden:
        below += (36 if weights else 0) + 44 + 36 * len(pred.probabilities)
    picture = max(_MIN_PICTURE, min(480, _PAGE[1] - 40 - y - 50 - below))
    half = (width - 30) // 2
    _paste_fitted(page, image, (margin, y, half, picture))
    draw.text((margin, y + picture + 8), "Image", font=small, fill=(60, 60, 60))
    if overlay is not None:
        _paste_fitted(page, overlay, (margin + half + 30, y, half, picture))
        draw.text((margin + half + 30, y + picture + 8), f"Grad-CAM overlay: {cam_target}", font=small,
                  fill=(60, 60, 60))
    else:
        draw.text((margin + half + 30, y + picture // 2 - 20),
                  "Grad-CAM not reported" if hidden else "Grad-CAM not available", font=body, fill=(120, 120, 120))
    y += picture + 50

    if pred.traffic_light == "grey":
        draw.text((margin, y), "Not assessable: retake the image.", font=head, fill=(90, 90, 90))
        y += 44
    for name, value in fields:
        if name == "Risk light":
            colour = _LIGHT_RGB.get(pred.traffic_light, (150, 150, 150))
            draw.ellipse((margin, y + 4, margin + 24, y + 28), fill=colour, outline=(60, 60, 60))
        lines = _wrap(draw, f"{name}: {value}", body, width - 40)
        for line in lines:
            draw.text((margin + 40, y), line, font=body, fill=(30, 30, 30))
            y += 32
        y += 6
    if hidden:
        return page
    if weights:
        formula = "Risk score = " + " + ".join(f"{w:g} × P({n})" for n, w in weights.items()) + ", clipped to [0, 1]"
        draw.text((margin + 40, y), formula, font=small, fill=(80, 80, 80))
        y += 36
    draw.text((margin, y), "Probability of each diagnosis", font=head, fill=(20, 20, 20))
    y += 44
    bar_left, bar_width = margin + 420, width - 420 - 110
    ranked = sorted(pred.probabilities.items(), key=lambda kv: -kv[1])
    for i, (code, p) in enumerate(ranked):
        if y > _PAGE[1] - 40 - 36 and i < len(ranked) - 1:  # never silently: say what did not fit
            rest = ", ".join(f"{c} {q:.1%}" for c, q in ranked[i:])
            draw.text((margin, y), f"Not drawn for lack of room: {rest}", font=small, fill=(150, 30, 30))
            break
        draw.text((margin, y), f"{CLASS_NAMES.get(code, code)} ({code})", font=body, fill=(30, 30, 30))
        draw.rectangle((bar_left, y + 4, bar_left + bar_width, y + 26), fill=(236, 236, 236))
        draw.rectangle((bar_left, y + 4, bar_left + round(bar_width * p), y + 26), fill=(70, 110, 180))
        draw.text((bar_left + bar_width + 12, y), f"{p:.1%}", font=body, fill=(30, 30, 30))
        y += 36
    return page


def report_overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float,
                   preprocessing: dict[str, Any] | None) -> np.ndarray:
    """The report's Grad-CAM picture: as on screen, with the border the model did not see greyed."""
    seen = seen_mask(image.shape, preprocessing) if preprocessing else None
    return overlay(image, heatmap, float(opacity), seen)


def build_report(image: np.ndarray, overlay: np.ndarray | None, prediction: Any, *, fmt: str = "png",
                 **kwargs: Any) -> bytes:
    """The per-image report as PNG or PDF bytes, without EXIF or any metadata of the upload.

    Args:
        image: The lesion image (RGB uint8).
        overlay: Its Grad-CAM overlay (RGB uint8), or None.
        prediction: ``backend.inference.Prediction`` of the image.
        fmt: ``png`` or ``pdf``.
        **kwargs: ``image_name``, ``model_name``, ``model_version`` (required), ``cam_target``,
            ``metadata``, ``risk_cfg`` (the model's ``RiskConfig``: weights, thresholds and where they
            come from, printed beside the risk score), ``created``, ``light_meaning`` (what the light meant on the
            model's test split, added to the plain meaning; see :func:`render_report`), ``patient_id``,
            ``lesion_id``, ``decision`` and ``note`` (the clinician's review) and ``show_model_result``
            (a not-assessable image's result is left out of the report unless True, as on screen).

    Raises:
        ValueError: On an unknown format.
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"report format must be one of {sorted(REPORT_FORMATS)}, got {fmt!r}")
    if fmt == "pdf":
        return pdf_report(image, overlay, prediction, **kwargs)
    buffer = io.BytesIO()
    render_report(image, overlay, prediction, **kwargs).save(buffer, format="PNG")
    return buffer.getvalue()
