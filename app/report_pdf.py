"""The per-image PDF report with a real text layer: searchable, selectable text under human field names.

The page is laid out with fpdf2 (text as PDF text in an embedded, subset DejaVu font, so a reader
can search and copy it; Helvetica with Latin-1 text where the font file is missing). The lesion
image and its Grad-CAM overlay are embedded as new JPEG pictures made from pixel arrays, so no
EXIF or other metadata of the uploaded file (camera, GPS, dates) reaches the PDF. Built in memory.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from app.components import CLASS_NAMES, diagnosis_headline, quality_reasons
from backend.inference.risk import melanoma_likely, risk_decimals, risk_words, thresholds_sentence

#: Words of each light for people (the colour is never the only cue).
LIGHT_WORDS: dict[str, str] = {
    "green": "Green: low risk",
    "yellow": "Yellow: intermediate risk",
    "red": "Red: high risk",
    "grey": "Grey: not assessable, retake the image",
}
#: What each light means, in a clinician's words (a model card may add its test-split figures).
LIGHT_MEANINGS: dict[str, str] = {
    "green": "The risk score is below the model's lower threshold.",
    "yellow": "The risk score lies between the model's two thresholds: review the lesion clinically.",
    "red": "The risk score is above the model's upper threshold: prioritise the review of this lesion.",
    "grey": "The image quality is too poor for the model's result to be trusted: retake the image and "
            "analyse it again.",
}
_FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"),)
_PICTURE_SIDE = 900  # pixels of an embedded picture's longer side (sharp at 90 mm, a small file)


def _font_files() -> tuple[Path, Path] | None:
    for folder in _FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


def printable(text: Any, limit: int = 100) -> str:
    """A user-supplied string made safe to draw on the report.

    Control and format characters (CR, LF, NUL, the right-to-left override that disguises an
    extension...) become ``?`` and the text is cut to ``limit`` characters with an ellipsis: Pillow's
    text layout fails on a name holding a line break (``raqm_layout() failed``), and an overlong
    name would run off the page.
    """
    clean = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def light_fields(prediction: Any, meaning: str = "", show_model_result: bool = False) -> tuple[str, str]:
    """``(Risk light, What the light means)`` of a prediction, in words.

    A grey (not assessable) prediction names the model's own light only when the clinician asked to
    see the model's result anyway (``show_model_result``).
    """
    light = prediction.traffic_light
    words = LIGHT_WORDS.get(light, light)
    model_light = getattr(prediction, "model_light", light) or light
    if light == "grey" and show_model_result and model_light != light:
        words += f" (the model's own light, shown on request: {LIGHT_WORDS.get(model_light, model_light)})"
    explained = " ".join(part for part in (LIGHT_MEANINGS.get(light, ""), meaning) if part)
    return words, explained


def result_hidden(prediction: Any, show_model_result: bool) -> bool:
    """Whether a report leaves the model's result out: a not-assessable image the clinician did not unhide."""
    return prediction.traffic_light == "grey" and not show_model_result


def thickness_field(prediction: Any) -> str:
    """The Breslow estimate as a band (never two decimals), muted when melanoma is not a likely class."""
    band = prediction.thickness_band or "unknown"
    p_mel = prediction.probabilities.get("MEL", 0.0)
    caveat = "applies only if the lesion is a melanoma; never a substitute for histopathology"
    if melanoma_likely(prediction.probabilities, suggested=getattr(prediction, "top_class", None)):
        return f"band {band} ({caveat})"
    return f"melanoma unlikely here (probability {p_mel:.1%}); if it were one, band {band} ({caveat})"


def risk_field(risk: float, risk_cfg: Any = None) -> str:
    """The risk score with its scale and, given the model's :class:`RiskConfig`, the thresholds and their origin."""
    if risk_cfg is None:
        return f"{risk_words(risk)} on a scale of 0 to 1"
    digits = risk_decimals(risk, risk_cfg)
    return f"{risk_words(risk, digits)} on a scale of 0 to 1. {thresholds_sentence(risk_cfg, digits)}"


def report_fields(prediction: Any, metadata: dict[str, Any] | None = None, light_meaning: str = "", *,
                  patient_id: str = "", lesion_id: str = "", show_model_result: bool = False,
                  risk_cfg: Any = None, decision: str = "", note: str = "") -> list[tuple[str, str]]:
    """The report's ``(field name, value)`` lines, in reading order.

    The clinician's decision and note come first after the IDs, as the review the report carries.

    A not-assessable image's diagnosis, probabilities, risk and thickness are left out unless the
    clinician asked to see the model's result anyway (``show_model_result``), as on screen.
    """
    pred = prediction
    light, meaning = light_fields(pred, light_meaning, show_model_result)
    headline = diagnosis_headline(pred)
    top = headline.code
    reasons = quality_reasons(pred)
    given = {k: v for k, v in (metadata or {}).items() if v not in (None, "")}
    names = {"age_approx": "age", "sex": "sex", "anatom_site_general": "site"}
    meta = ", ".join(f"{names.get(k, k)} {printable(v, 40)}" for k, v in given.items()) or "none given"
    used = "used by the model" if pred.metadata_used else "not used by the model"
    ids = [("Patient ID", printable(patient_id, 60) or "not given"), ("Lesion ID", printable(lesion_id, 60) or
                                                                     "not given"),
           ("Clinician's decision", printable(decision, 60) or "not recorded"),
           *([("Clinician's note", printable(note, 300))] if str(note or "").strip() else [])]
    quality = ("Image quality", " ".join(reasons) if reasons else "No issues detected.")
    if result_hidden(pred, show_model_result):
        return [*ids, ("Risk light", light), ("What the light means", meaning), quality,
                ("Model's result", "Not reported: the image cannot be assessed. Retake it; on screen, \"Show the "
                                   "model's result anyway\" adds the result to a new report."),
                ("Patient metadata", f"{meta} ({used})")]
    return [
        *ids,
        (headline.title, f"{CLASS_NAMES.get(top, top)} ({top}), probability {headline.probability:.1%}"
                         + (f". {headline.note}" if headline.note else "")),
        ("Probability of malignancy", f"{pred.malignant:.1%} (melanoma + basal cell carcinoma + squamous cell "
                                      f"carcinoma); benign {pred.benign:.1%}"),
        ("Risk score", risk_field(pred.risk, risk_cfg)),
        ("Risk light", light),
        ("What the light means", meaning),
        ("Estimated Breslow thickness", thickness_field(pred)),
        quality,
        ("Patient metadata", f"{meta} ({used})"),
    ]


class _Writer:
    """Thin helpers over an ``FPDF`` document: fonts, field lines, pictures."""

    def __init__(self) -> None:
        from fpdf import FPDF

        self.pdf = FPDF(format="A4", unit="mm")
        self.pdf.set_auto_page_break(True, margin=15)
        self.pdf.set_margins(18, 15, 18)
        fonts = _font_files()
        self.unicode = fonts is not None
        if fonts is not None:
            self.pdf.add_font("DejaVu", "", str(fonts[0]))
            self.pdf.add_font("DejaVu", "B", str(fonts[1]))
            self.family = "DejaVu"
        else:
            self.family = "Helvetica"

    def text(self, value: str) -> str:
        """``value`` as the font can draw it.

        A character the font has no glyph for is written as its code point (``[U+60A3]``), never
        dropped: a patient ID of ``患者-7`` must not print as ``-7``.
        """
        if self.unicode:
            glyphs = self.pdf.fonts[self.family.lower()].cmap
            return "".join(ch if ord(ch) in glyphs or ch.isspace() else f"[U+{ord(ch):04X}]" for ch in value)
        value = value.replace("…", "...").replace("×", "x")
        return "".join(ch if ord(ch) < 256 else f"[U+{ord(ch):04X}]" for ch in value)

    def line(self, value: str, size: float = 10, bold: bool = False, colour: tuple[int, int, int] = (30, 30, 30),
             height: float = 5.5) -> None:
        pdf = self.pdf
        pdf.set_font(self.family, "B" if bold else "", size)
        pdf.set_text_color(*colour)
        pdf.multi_cell(0, height, self.text(value), new_x="LMARGIN", new_y="NEXT")

    def field(self, name: str, value: str) -> None:
        pdf = self.pdf
        pdf.set_font(self.family, "B", 10)
        pdf.set_text_color(30, 30, 30)
        pdf.cell(58, 5, self.text(name))
        pdf.set_font(self.family, "", 10)
        pdf.multi_cell(0, 5, self.text(value), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(0.8)

    def picture(self, image: np.ndarray, x: float, y: float, width: float, height: float) -> None:
        """Embed an RGB array as a new JPEG (pixels only), fitted into the box and centred."""
        from PIL import Image

        picture = Image.fromarray(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)))
        picture.thumbnail((_PICTURE_SIDE, _PICTURE_SIDE), Image.Resampling.LANCZOS)
        scale = min(width / picture.width, height / picture.height)
        w, h = picture.width * scale, picture.height * scale
        self.pdf.image(picture, x + (width - w) / 2, y + (height - h) / 2, w, h)


def pdf_report(image: np.ndarray, overlay: np.ndarray | None, prediction: Any, *, image_name: str,
               model_name: str, model_version: str, cam_target: str = "", metadata: dict[str, Any] | None = None,
               risk_cfg: Any = None, created: datetime | None = None,
               light_meaning: str = "", patient_id: str = "", lesion_id: str = "",
               show_model_result: bool = False, decision: str = "", note: str = "") -> bytes:
    """The one-page report as PDF bytes with a text layer (arguments as ``app.report.build_report``)."""
    hidden = result_hidden(prediction, show_model_result)
    if hidden:
        overlay = None  # a Grad-CAM is part of the result the report leaves out
    created = created or datetime.now(timezone.utc)
    out = _Writer()
    pdf = out.pdf
    pdf.set_title("DermaLens lesion report")
    pdf.set_creator("DermaLens")
    pdf.set_producer("DermaLens")
    pdf.set_creation_date(created)
    pdf.set_image_filter("DCTDecode")
    pdf.add_page()
    out.line("DermaLens lesion report", size=20, bold=True, height=10)
    out.field("Image", printable(image_name))
    out.field("Model", f"{printable(model_name)} (version {printable(model_version, 40)})")
    out.field("Report created", created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out.line("Decision support, not a diagnosis: to be interpreted by a qualified clinician.", size=9,
             colour=(150, 30, 30))
    pdf.ln(2)
    if prediction.traffic_light == "grey":
        out.line("Not assessable: retake the image.", size=13, bold=True, colour=(90, 90, 90), height=7)
        if not hidden:
            out.line("The result below is the model's, shown on request for the record only: the image cannot be "
                     "assessed.", size=10)
        pdf.ln(2)

    top, box_w, box_h, gap = pdf.get_y(), (pdf.epw - 8) / 2, 60.0, 8
    out.picture(image, pdf.l_margin, top, box_w, box_h)
    if overlay is not None:
        out.picture(overlay, pdf.l_margin + box_w + gap, top, box_w, box_h)
    pdf.set_xy(pdf.l_margin, top + box_h + 1)
    pdf.set_font(out.family, "", 8)
    pdf.set_text_color(90, 90, 90)
    pdf.cell(box_w + gap, 4, "Lesion image")
    pdf.cell(box_w, 4, out.text(f"Grad-CAM overlay: {cam_target}" if overlay is not None
                                else "Grad-CAM not reported" if hidden else "Grad-CAM not available"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)

    for name, value in report_fields(prediction, metadata, light_meaning, patient_id=patient_id,
                                     lesion_id=lesion_id, show_model_result=show_model_result, risk_cfg=risk_cfg,
                                     decision=decision, note=note):
        out.field(name, value)
    if hidden:
        return bytes(pdf.output())
    weights = dict(risk_cfg.weights) if risk_cfg is not None else {}
    if weights:
        formula = " + ".join(f"{w:g} × P({n})" for n, w in weights.items())
        out.line(f"Risk score = {formula}, clipped to 0 to 1.", size=8, colour=(90, 90, 90))
    pdf.ln(2)
    out.line("Probability of each diagnosis", size=12, bold=True, height=7)
    ranked = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])
    pdf.set_font(out.family, "", 9.5)
    pdf.set_text_color(30, 30, 30)
    half = pdf.epw / 2
    for i, (code, p) in enumerate(ranked):  # two columns, most probable first
        pdf.cell(half - 20, 5, out.text(f"{CLASS_NAMES.get(code, code)} ({code})"))
        pdf.cell(20, 5, f"{p:.1%}", new_x="LMARGIN" if i % 2 else "RIGHT", new_y="NEXT" if i % 2 else "TOP")
    return bytes(pdf.output())
