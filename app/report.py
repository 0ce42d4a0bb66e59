"""Exports of the dashboard, built in memory: the results table (CSV) and a one-page report per image.

The report (PNG or PDF) holds the image, its Grad-CAM overlay, the class probabilities, the risk
index, the Breslow thickness estimate, the quality flags, the model's name and version and the
time it was made. It is drawn from pixel arrays onto a new canvas with Pillow, so no EXIF or
other metadata of the uploaded file (camera, GPS, dates) can reach it; nothing touches the disk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from app.components import CLASS_NAMES
from backend.inference.records import OUTPUT_COLUMNS

#: Extra CSV columns after ``backend.inference.records.OUTPUT_COLUMNS``.
EXTRA_COLUMNS: tuple[str, ...] = ("age_approx", "sex", "anatom_site_general", "metadata_used", "model",
                                  "model_version")
REPORT_FORMATS: dict[str, str] = {"png": "image/png", "pdf": "application/pdf"}
_PAGE = (1240, 1754)  # A4 at 150 dpi
_LIGHT_RGB = {"green": (46, 125, 50), "yellow": (249, 168, 37), "red": (198, 40, 40)}
_LIGHT_WORDS = {"green": "green (low risk)", "yellow": "yellow (intermediate risk)", "red": "red (high risk)"}
_FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_BOLD_FILES = ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _safe_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (a file named ``=cmd|...`` stays text)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def results_csv(uploads: Iterable[Any], model_name: str, model_version: str) -> bytes:
    """The session's predictions as CSV: ``scripts/predict.py``'s columns, then metadata and model.

    Args:
        uploads: ``app.state.Upload`` objects; those without a prediction are left out.
        model_name: Name of the model that made the predictions.
        model_version: Its version.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*OUTPUT_COLUMNS, *EXTRA_COLUMNS], lineterminator="\n")
    writer.writeheader()
    for upload in uploads:
        if upload.prediction is None:
            continue
        row = upload.prediction.to_row()
        row["image"] = upload.name
        row.update({k: ("" if upload.metadata.get(k) is None else upload.metadata[k]) for k in EXTRA_COLUMNS[:3]})
        row.update({"metadata_used": upload.prediction.metadata_used, "model": model_name,
                    "model_version": model_version})
        writer.writerow({k: _safe_cell(v) for k, v in row.items()})
    return out.getvalue().encode("utf-8")


def _printable(text: str, limit: int = 100) -> str:
    """A user-supplied string made safe to draw on the report.

    Control and format characters (CR, LF, NUL, the right-to-left override that disguises an
    extension...) become ``?`` and the text is cut to ``limit`` characters with an ellipsis: Pillow's
    text layout fails on a name holding a line break (``raqm_layout() failed``), and an overlong
    name would run off the page.
    """
    clean = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


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
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words, line = paragraph.split(), ""
        for word in words:
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=font) <= width or not line:
                line = trial
            else:
                lines.append(line)
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
    risk_weights: dict[str, float] | None = None,
    created: datetime | None = None,
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
    for line in (f"Image: {_printable(image_name)}",
                 f"Model: {_printable(model_name)} (version {_printable(model_version, 40)})",
                 f"Generated: {created.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}"):
        draw.text((margin, y), line, font=body, fill=(40, 40, 40))
        y += 34
    y += 6
    for line in _wrap(draw, "Decision support, not a diagnosis: to be interpreted by a qualified clinician.",
                      small, width):
        draw.text((margin, y), line, font=small, fill=(150, 30, 30))
        y += 26
    y += 14

    half = (width - 30) // 2
    _paste_fitted(page, image, (margin, y, half, 480))
    draw.text((margin, y + 488), "Image", font=small, fill=(60, 60, 60))
    if overlay is not None:
        _paste_fitted(page, overlay, (margin + half + 30, y, half, 480))
        draw.text((margin + half + 30, y + 488), f"Grad-CAM overlay: {cam_target}", font=small, fill=(60, 60, 60))
    else:
        draw.text((margin + half + 30, y + 220), "Grad-CAM not available", font=body, fill=(120, 120, 120))
    y += 530

    pred = prediction
    draw.text((margin, y), "Class probabilities", font=head, fill=(20, 20, 20))
    y += 44
    bar_left, bar_width = margin + 420, width - 420 - 110
    for code, p in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]):
        draw.text((margin, y), f"{code}  {CLASS_NAMES.get(code, '')}", font=body, fill=(30, 30, 30))
        draw.rectangle((bar_left, y + 4, bar_left + bar_width, y + 26), fill=(236, 236, 236))
        draw.rectangle((bar_left, y + 4, bar_left + round(bar_width * p), y + 26), fill=(70, 110, 180))
        draw.text((bar_left + bar_width + 12, y), f"{p:.1%}", font=body, fill=(30, 30, 30))
        y += 36
    draw.text((margin, y + 4), f"Benign {pred.benign:.1%}   ·   Malignant (MEL + BCC + SCC) {pred.malignant:.1%}",
              font=body, fill=(30, 30, 30))
    y += 56

    draw.text((margin, y), "Risk index", font=head, fill=(20, 20, 20))
    y += 44
    colour = _LIGHT_RGB.get(pred.traffic_light, (150, 150, 150))
    draw.ellipse((margin, y + 2, margin + 26, y + 28), fill=colour, outline=(60, 60, 60))
    draw.text((margin + 40, y), f"{pred.risk:.3f}: {_LIGHT_WORDS.get(pred.traffic_light, pred.traffic_light)}",
              font=body, fill=(30, 30, 30))
    y += 36
    weights = risk_weights or {}
    if weights:
        formula = "risk = " + " + ".join(f"{w:g} × P({n})" for n, w in weights.items()) + ", clipped to [0, 1]"
        draw.text((margin, y), formula, font=small, fill=(80, 80, 80))
        y += 30
    y += 16

    draw.text((margin, y), "Breslow thickness (if melanoma)", font=head, fill=(20, 20, 20))
    y += 44
    draw.text((margin, y), f"{pred.thickness_mm:.2f} mm, band {pred.thickness_band or 'unknown'}", font=body,
              fill=(30, 30, 30))
    y += 34
    draw.text((margin, y), "Applies only if the lesion is a melanoma; never a substitute for histopathology.",
              font=small, fill=(80, 80, 80))
    y += 46

    draw.text((margin, y), "Quality gate and inputs", font=head, fill=(20, 20, 20))
    y += 44
    flags = "; ".join(f"{c}: {pred.flag_reasons.get(c, c)}" for c in pred.flags) or "no issues detected"
    given = {k: v for k, v in (metadata or {}).items() if v not in (None, "")}
    meta_text = ", ".join(f"{k} {v}" for k, v in given.items()) or "none given"
    used = "used by the model" if pred.metadata_used else "not used by the model"
    for line in (*_wrap(draw, f"Quality flags: {flags}", body, width),
                 *_wrap(draw, f"Patient metadata: {meta_text} ({used})", body, width)):
        draw.text((margin, y), line, font=body, fill=(30, 30, 30))
        y += 34
    return page


def build_report(image: np.ndarray, overlay: np.ndarray | None, prediction: Any, *, fmt: str = "png",
                 **kwargs: Any) -> bytes:
    """The per-image report as PNG or PDF bytes, without EXIF or any metadata of the upload.

    Args:
        image: The lesion image (RGB uint8).
        overlay: Its Grad-CAM overlay (RGB uint8), or None.
        prediction: ``backend.inference.Prediction`` of the image.
        fmt: ``png`` or ``pdf``.
        **kwargs: ``image_name``, ``model_name``, ``model_version`` (required), ``cam_target``,
            ``metadata``, ``risk_weights``, ``created`` (see :func:`render_report`).

    Raises:
        ValueError: On an unknown format.
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"report format must be one of {sorted(REPORT_FORMATS)}, got {fmt!r}")
    page = render_report(image, overlay, prediction, **kwargs)
    buffer = io.BytesIO()
    if fmt == "png":
        page.save(buffer, format="PNG")
    else:
        page.save(buffer, format="PDF", resolution=150.0, quality=92, title="DermaLens lesion report",
                  creator="DermaLens", producer="DermaLens")
    return buffer.getvalue()
