"""Render helpers of the dashboard: gallery cards with a traffic light, plotly bars, Grad-CAM views.

They draw what they are given and keep no state; the pages decide what to show. Plotly and pandas
are imported inside the functions that need them, so the first paint does not wait for them.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from backend.data.schema import IMAGE_EXTENSIONS, MALIGNANT_DIAGNOSES
from backend.errors import DermaLensError
from backend.evaluation.card_sections import band_accuracy_sentence, light_meaning
from backend.inference.explain import legend_strip, overlay, seen_mask
from backend.inference.inputs import PreparedInput, prepare_input
from backend.inference.quality import FLAG_CODES
from backend.inference.risk import (
    AT_THE_TOP,
    format_risk,
    light_reason,
    melanoma_likely,
    risk_decimals,
    thresholds_sentence,
)

#: Full names of the diagnoses (codes as in ``backend.data.schema.DIAGNOSES``).
CLASS_NAMES: dict[str, str] = {
    "MEL": "melanoma",
    "NV": "melanocytic nevus",
    "BCC": "basal cell carcinoma",
    "AK": "actinic keratosis",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
    "SCC": "squamous cell carcinoma",
}
#: Traffic light -> (colour, words). The words go with the colour for colour-blind users.
LIGHTS: dict[str, tuple[str, str, str]] = {
    "green": ("#2e7d32", "Low risk", "Green light: low risk"),
    "yellow": ("#f9a825", "Medium risk", "Yellow light: intermediate risk"),
    "red": ("#c62828", "High risk", "Red light: high risk"),
    "grey": ("#757575", "Not assessable: retake", "Grey light: the image cannot be assessed, retake it"),
}
NOT_ASSESSABLE_TITLE = "Not assessable: retake the image"
SHOW_ANYWAY = "Show the model's result anyway"
#: File types the uploaders accept (the extensions DermaLens reads, without the dot).
ACCEPTED_TYPES: tuple[str, ...] = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
#: Longest side an upload is kept at: what is shown, and what the model, Grad-CAM and retrieval read.
DISPLAY_SIDE = 1024
#: An upload's shorter side is never scaled below this (nor below its own size): above the side the
#: bundled models decode at (224 px), so a very wide picture is not flagged "too small", nor read at
#: less detail than in a batch prediction, because of the app's own scaling.
MIN_SHORT_SIDE = 384
CAM_MODES: tuple[str, ...] = ("Overlay", "Side by side", "Heatmap only")
PREDICTED = "__predicted__"
#: Bar colours: benign classes neutral, malignant ones one muted warm colour (never alarm red).
BENIGN_COLOUR, MALIGNANT_COLOUR = "#9e9e9e", "#c98a5e"
UNSEEN_CAPTION = "The model did not see the greyed border (outside its centre crop)."
LEGEND_CAPTION = "Attention: low → high (below ~20% the image is left untinted)"
EXTRA_TARGETS: dict[str, str] = {"thickness": "Breslow thickness output"}
DISCLAIMER = (
    "**Decision support, not a diagnosis.** DermaLens estimates what a dermoscopic image may show; "
    "every result must be interpreted by a qualified clinician together with the patient's history "
    "and examination."
)


def class_label(code: str) -> str:
    """``MEL (melanoma)``."""
    return f"{code} ({CLASS_NAMES[code]})" if code in CLASS_NAMES else code


def suggestion_note(pred: Any) -> str:
    """Why the suggested diagnosis is not the most probable one, in words ("" when it is).

    A bundle calibrated with per-class offsets gives honest probabilities, in which common benign
    diagnoses weigh more; its suggestion stays the class-balanced decision the network was trained
    to make, so a rarer diagnosis can be suggested while a common one is more probable.
    """
    probabilities = getattr(pred, "probabilities", None) or {}
    if not probabilities:
        return ""
    likeliest = max(probabilities, key=probabilities.get)
    if likeliest == pred.top_class:
        return ""
    return (f"More probable: {class_label(likeliest)}, {probabilities[likeliest]:.0%}. The suggestion weighs "
            "every diagnosis equally, however common, so a rarer one is not outvoted by a common one.")


#: The least probability at which the class-balanced suggestion is headlined as the diagnosis.
#: Below it, on v1.2's validation split (8% of images), the suggestion was right in 6% of them and
#: the most probable class in 39%: a rare diagnosis lifted by the balancing from a few per cent.
PLAUSIBLE_SUGGESTION = 0.10


@dataclass(frozen=True)
class Headline:
    """The diagnosis the screen, the card and the reports lead with, and what to say about it."""

    title: str  # "Suggested diagnosis" or "Most probable diagnosis"
    code: str
    probability: float
    note: str  # "" when nothing needs saying


def diagnosis_headline(pred: Any) -> Headline:
    """The class-balanced suggestion when plausible (:data:`PLAUSIBLE_SUGGESTION`), else the most probable class.

    The suggestion weighs every diagnosis equally, so it finds rare ones a plain "most probable"
    rule would outvote; but a class at 1% must not head a red lesion's result. Then the most
    probable class leads and the suggestion is named as a rarer diagnosis to keep in mind.
    """
    probabilities = getattr(pred, "probabilities", None) or {}
    suggested = pred.top_class
    p_suggested = float(probabilities.get(suggested, getattr(pred, "top_probability", 0.0)))
    if not probabilities or p_suggested >= PLAUSIBLE_SUGGESTION:
        return Headline("Suggested diagnosis", suggested, p_suggested, suggestion_note(pred))
    likeliest = max(probabilities, key=probabilities.get)
    return Headline("Most probable diagnosis", likeliest, float(probabilities[likeliest]),
                    f"The class-balanced suggestion, {class_label(suggested)}, is only {p_suggested:.1%} probable: "
                    "a rarer diagnosis to keep in mind, not the diagnosis.")


def result_summary(pred: Any) -> str:
    """``red, risk score 0.557, leading with melanoma (MEL)``: a result in one phrase (grey: not assessable)."""
    if not assessable(pred):
        return "not assessable (grey)"
    headline = diagnosis_headline(pred)
    return f"{pred.traffic_light}, risk score {format_risk(pred.risk)}, leading with {class_label(headline.code)}"


def review_key(pred: Any) -> tuple[str, str | None]:
    """What a review decision rests on: the light and, for an assessable image, the leading diagnosis."""
    return pred.traffic_light, diagnosis_headline(pred).code if assessable(pred) else None


def target_label(target: str) -> str:
    """What the Grad-CAM target picker shows for a target name."""
    if target == PREDICTED:
        return "Diagnosis shown"
    return EXTRA_TARGETS.get(target) or class_label(target)


# -- pictures -------------------------------------------------------------------------------------


def fit_image(image: np.ndarray, max_side: int, min_short: int = 0) -> np.ndarray:
    """The image scaled down (aspect kept) so that its longer side is at most ``max_side``.

    ``min_short`` wins over ``max_side``: the shorter side is never scaled below it (nor the image
    up), so a very wide picture keeps the detail the model and the quality gate need.
    """
    from PIL import Image

    h, w = image.shape[:2]
    scale = max(max_side / max(h, w), min(1.0, min_short / min(h, w)))
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def prepare_upload(name: str, data: bytes, max_side: int = DISPLAY_SIDE) -> PreparedInput:
    """Decode an uploaded file once, for display and for every model step (prediction, Grad-CAM, similar cases).

    The picture is decoded at reduced size when large and scaled to at most ``max_side`` on its
    longer side; the model's eval transform takes it from there, so the file is never decoded again.

    Raises:
        ImageLoadError: The file cannot be decoded (the message names it).
    """
    decoded = prepare_input((name, data), target_size=max_side)
    return PreparedInput(name, fit_image(decoded.image, max_side, min_short=MIN_SHORT_SIDE), data)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of an RGB uint8 array (written by PIL from pixels only: no EXIF, no text chunks)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def thumbnail_png(image: np.ndarray, side: int = 240) -> bytes:
    """A square-ish gallery thumbnail as PNG bytes."""
    return png_bytes(fit_image(image, side))


# -- traffic light and gallery cards ------------------------------------------------------------


def error_words(err: BaseException) -> str:
    """An exception as the screen says it, never with a Python class name.

    The project's own errors read as they are (they name the file or field and what is wrong);
    anything else is an unexpected error.
    """
    return str(err) if isinstance(err, DermaLensError) else f"unexpected error ({err})"


def light_html(light: str | None, wrap: bool = False) -> str:
    """A coloured dot followed by its meaning in words (grey "not analysed" when ``light`` is None).

    The words carry the level for colour-blind users; the tooltip also names the colour. ``wrap``
    lets the words break over lines (a narrow gallery card) instead of running past its edge.
    """
    colour, words, full = LIGHTS.get(light or "", ("#9e9e9e", "Not analysed", "Not analysed yet"))
    space = "normal" if wrap else "nowrap"
    return (
        f'<span class="dl-light dl-light-{html.escape(light or "none")}" role="img" aria-label="{full}" '
        f'title="{full}" style="white-space:{space};font-size:0.85rem;font-weight:600">'
        f'<span style="display:inline-block;width:0.95rem;height:0.95rem;border-radius:50%;background:{colour};'
        f'vertical-align:-0.12rem;border:1px solid rgba(0,0,0,0.3)"></span>&nbsp;{words}</span>'
    )


def assessable(pred: Any) -> bool:
    """False when the prediction's light is grey: the quality gate found the image unusable."""
    return getattr(pred, "traffic_light", None) != "grey"


def quality_reasons(pred: Any) -> list[str]:
    """The quality gate's reasons for ``pred``, in words, in flag order."""
    return [pred.flag_reasons.get(code, code.replace("_", " ")) for code in pred.flags]


def card_header_html(pred: Any) -> str:
    """The card's first line: the headline diagnosis (its code; :func:`diagnosis_headline`), the light at the top-right.

    No percentage: the one "how worried" number is the viewer's risk score, so the card does not show a
    second one. An image that is not assessable shows no diagnosis, only its grey light.
    """
    head = "&nbsp;" if pred is None or not assessable(pred) else html.escape(diagnosis_headline(pred).code)
    return (
        '<div class="dl-card-head" style="display:flex;flex-wrap:wrap;justify-content:space-between;'
        f'align-items:center;gap:0.4rem;margin-bottom:0.2rem"><span style="font-weight:700">{head}</span>'
        f'{light_html(None if pred is None else pred.traffic_light, wrap=True)}</div>'
    )


def render_card(upload: Any, pred: Any, is_selected: bool, on_select: Callable[[str], None],
                on_remove: Callable[[str], None], confirm: Callable[[Any], None] | None = None) -> None:
    """One gallery card: top diagnosis and traffic light, thumbnail, file name, review tag, buttons.

    ``pred`` is the upload's prediction by the loaded model, or None (not analysed). The buttons are
    named for their image ("Select x.jpg", "Remove x.jpg") so screen readers and tests can tell them
    apart; the thumbnail's card is selected with the first. ``confirm`` (the page's) draws, in place
    of the Remove button, the question a removal that would lose a review waits on: in the card the
    clinician clicked, not at the top of a long gallery.
    """
    with st.container(border=True, key=f"card_{upload.id}"):
        st.markdown(card_header_html(pred), unsafe_allow_html=True)
        st.image(upload.thumbnail, width="stretch", alt=f"Thumbnail of {upload.name}")
        if pred is None:
            detail = "could not be analysed by this model" if getattr(upload, "failure", "") else "not analysed yet"
        elif not assessable(pred):
            # Short reasons on the card (the viewer gives each in full): a grey card stays card-sized.
            detail = "Not assessable: " + ", ".join(FLAG_CODES.get(code, code.replace("_", " ")) for code in pred.flags)
        else:
            code = diagnosis_headline(pred).code
            detail = CLASS_NAMES.get(code, code)
        decision = getattr(upload, "decision", "")
        tag = f"  \n**Reviewed: {decision}**" if decision else ""
        if decision and getattr(upload, "changed_since_review", ""):
            tag += "  \n**Result changed since the review**"
        st.caption(f"{upload.name}  \n{detail}{tag}")
        st.button(f"Showing {upload.name}" if is_selected else f"Select {upload.name}", key=f"select_{upload.id}",
                  type="primary" if is_selected else "secondary", on_click=on_select, args=(upload.id,),
                  width="stretch", icon=":material/visibility:",
                  help="Shown in the viewer" if is_selected else "Show this image in the viewer")
        if confirm is not None:
            confirm(upload)
            return
        st.button(f"Remove {upload.name} from the worklist", key=f"remove_{upload.id}", on_click=on_remove,
                  args=(upload.id,), width="stretch", icon=":material/close:",
                  help="Remove this image and its results from the session and the uploader")


def render_gallery(items: list[tuple[Any, Any]], selected_id: str | None, on_select: Callable[[str], None],
                   on_remove: Callable[[str], None], per_row: int = 2, pending_remove: str | None = None,
                   confirm: Callable[[Any], None] | None = None) -> None:
    """``(upload, prediction or None)`` pairs as a grid of cards, in the given order.

    The card of ``pending_remove`` asks its removal question there, through ``confirm``.
    """
    for start in range(0, len(items), per_row):
        columns = st.columns(per_row)
        for column, (upload, pred) in zip(columns, items[start : start + per_row], strict=False):
            with column:
                render_card(upload, pred, upload.id == selected_id, on_select, on_remove,
                            confirm if upload.id == pending_remove else None)


# -- results ------------------------------------------------------------------------------------


#: Pixels per character of a bar label at the charts' font size, with room to spare.
LABEL_CHAR_PX = 7.5


def label_margin(labels: list[str]) -> int:
    """Left margin (px) that fits the longest bar label whole.

    Plotly's ``automargin`` measures the labels when the chart is drawn; a chart drawn inside a
    collapsed expander is measured at zero width and cut its labels to their last letters ("ASC",
    ". (malignant)"), so the margin is set from the labels themselves.
    """
    return int(12 + LABEL_CHAR_PX * max((len(label) for label in labels), default=0))


def malignancy_figure(pred: Any) -> Any:
    """Plotly horizontal bars: P(benign) in a neutral grey and P(malignant) in a muted warm colour."""
    import plotly.graph_objects as go

    labels = ["Benign", "Malignant"]
    values = [pred.benign, pred.malignant]
    fig = go.Figure(go.Bar(
        x=values, y=labels, orientation="h", marker_color=[BENIGN_COLOUR, MALIGNANT_COLOUR],
        text=[f"{v:.1%}" for v in values], textposition="auto", hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    fig.update_layout(height=170, margin={"l": 10, "r": 50, "t": 10, "b": 10}, showlegend=False,
                      xaxis={"range": [0, 1], "tickvals": [0, 0.25, 0.5, 0.75, 1], "tickformat": ".0%", "title": None,
                             "fixedrange": True},
                      yaxis={"autorange": "reversed", "fixedrange": True, "automargin": True})
    return fig


def class_table(pred: Any) -> Any:
    """All class probabilities as a DataFrame, most probable first, with each class's group."""
    import pandas as pd

    rows = [{"class": code, "diagnosis": CLASS_NAMES.get(code, code), "probability": p,
             "group": "malignant" if code in MALIGNANT_DIAGNOSES else "benign"}
            for code, p in pred.probabilities.items()]
    return pd.DataFrame(rows).sort_values("probability", ascending=False, ignore_index=True)


def class_figure(pred: Any) -> Any:
    """Plotly bars of every class, most probable on top: benign grey, malignant one muted warm colour."""
    import plotly.graph_objects as go

    table = class_table(pred)
    labels = [f"{c} ({'malignant' if g == 'malignant' else 'benign'})" for c, g in zip(table["class"], table["group"],
                                                                                    strict=True)]
    colours = [MALIGNANT_COLOUR if g == "malignant" else BENIGN_COLOUR for g in table["group"]]
    fig = go.Figure(go.Bar(
        x=list(table["probability"]), y=labels, orientation="h", marker_color=colours,
        text=[f"{v:.1%}" for v in table["probability"]], textposition="auto",
        customdata=list(table["diagnosis"]), hovertemplate="%{customdata}: %{x:.1%}<extra></extra>",
    ))
    fig.update_layout(height=60 + 26 * len(table), margin={"l": label_margin(labels), "r": 50, "t": 10, "b": 10},
                      showlegend=False,
                      xaxis={"range": [0, 1], "tickformat": ".0%", "fixedrange": True},
                      yaxis={"autorange": "reversed", "fixedrange": True, "automargin": True})
    return fig


def render_malignancy(pred: Any) -> None:
    """Detail: the benign vs malignant bars."""
    st.markdown("**Benign vs malignant**")
    st.plotly_chart(malignancy_figure(pred), config={"displayModeBar": False}, key="malignancy_bars")


def render_classes(pred: Any) -> None:
    """Detail: every class (benign grey, malignant warm) in an expander, across the viewer's width."""
    headline = diagnosis_headline(pred)
    with st.expander(f"All class probabilities ({headline.title.lower()}: {class_label(headline.code)}, "
                     f"{headline.probability:.0%})"):
        st.plotly_chart(class_figure(pred), config={"displayModeBar": False}, key="class_bars")


def risk_explanation(pred: Any, risk_cfg: Any) -> str:
    """How this image's risk score was computed, in words and with its numbers and thresholds."""
    weights = dict(risk_cfg.weights)
    digits = risk_decimals(pred.risk, risk_cfg)
    terms = " + ".join(f"{w:g} × P({name})" for name, w in weights.items()) or "0"
    numbers = " + ".join(f"{w:g} × {pred.probabilities.get(name, 0.0):.3f}" for name, w in weights.items()) or "0"
    return (
        f"risk = {terms}, clipped to [0, 1]\n\n"
        f"= {numbers} = **{format_risk(pred.risk, digits)}**\n\n"
        f"Traffic light: {thresholds_sentence(risk_cfg, digits)} Melanoma weighs most because missing it costs most."
    )


def risk_headline(pred: Any, risk_cfg: Any) -> str:
    """The one headline number: ``Risk score 0.420 (red from 0.350)``."""
    digits = risk_decimals(pred.risk, risk_cfg)
    top = f"; {AT_THE_TOP}" if float(pred.risk) >= 1.0 else ""
    return (f"Risk score {format_risk(pred.risk, digits)} (red from {format_risk(risk_cfg.yellow_below, digits)}"
            f"{top})")


def render_risk(pred: Any, risk_cfg: Any, card: dict[str, Any] | None = None) -> None:
    """The headline: the light, ONE risk number, why this light, what it meant on the test split, how it is computed.

    The top-class % and P(malignant) stay in the detail bars (:func:`render_malignancy`, :func:`render_classes`).
    """
    # One flowing line, not two columns: a long light ("Not assessable: retake") then wraps the score
    # to the next line instead of being drawn over it in a narrow viewer.
    st.markdown(f"{light_html(pred.traffic_light)} &ensp; **{risk_headline(pred, risk_cfg)}**",
                unsafe_allow_html=True)
    if assessable(pred):
        st.caption(light_reason(pred.probabilities, pred.risk, risk_cfg))
        meaning = light_meaning(card or {}, pred.traffic_light)
        if meaning:
            st.caption(meaning)
    else:  # words only: a picture the model cannot read gets no risk colour, and no test-split figures
        st.caption(f"The image is not assessable, so no light is given. Shown on request, in words only: "
                   f"{light_reason(pred.probabilities, pred.risk, risk_cfg)} On an image like this one the "
                   "score may be wrong, whatever its value.")
    with st.expander("How the risk score is computed"):
        st.markdown(risk_explanation(pred, risk_cfg))


def render_thickness(pred: Any, card: dict[str, Any] | None = None) -> None:
    """Estimated Breslow band (a range, never two decimals) with the card's band accuracy.

    Shown openly only when melanoma is a likely class (:func:`backend.inference.risk.melanoma_likely`);
    otherwise muted in a collapsed expander.
    """
    band = pred.thickness_band or "unknown"
    accuracy = band_accuracy_sentence(card or {})
    p_mel = pred.probabilities.get("MEL", 0.0)
    note = (f"Applies only if the lesion is a melanoma (P(MEL) = {p_mel:.1%}). "
            + (accuracy + " " if accuracy else "") + "Never a substitute for histopathology.")
    if melanoma_likely(pred.probabilities, suggested=pred.top_class):
        st.markdown("**Breslow thickness (if melanoma)**")
        st.markdown(f"Estimated band **{band}**")
        st.caption(note)
        return
    with st.expander(f"Breslow thickness (if melanoma): melanoma unlikely here, P(MEL) = {p_mel:.1%}"):
        st.caption(f"Estimated band {band}. {note}")


def render_quality(pred: Any) -> None:
    """Quality-gate reasons in words (any of them makes the image not assessable)."""
    st.markdown("**Image quality**")
    if not pred.flags:  # neutral words, not a green box: green is the low-risk light
        st.caption("No quality issues detected.")
        return
    st.markdown("\n".join(f"- {reason}" for reason in quality_reasons(pred)))


def render_not_assessable(pred: Any, key: str, name: str = "", on_change: Any = None, args: tuple = ()) -> bool:
    """The viewer's first message for an image that cannot be assessed: why, and a control to see the result.

    Args:
        pred: The image's prediction (grey light).
        key: Widget key of the "show anyway" toggle (one per image).
        name: The image's file name (names the toggle for screen readers and tests).
        on_change: Called with ``args`` when the toggle changes (to keep the choice with the image).
        args: Arguments of ``on_change``.

    Returns:
        Whether the clinician asked to see the model's result anyway.
    """
    reasons = "\n".join(f"- {reason}" for reason in quality_reasons(pred))
    with st.container(border=True, key=f"dl_not_assessable_{key}"):  # the grey light, not an amber (yellow) box
        st.markdown(light_html("grey"), unsafe_allow_html=True)
        st.markdown(f"**{NOT_ASSESSABLE_TITLE}.** The model's result is not shown because this image cannot be "
                    f"assessed:\n{reasons}")
        label = f"{SHOW_ANYWAY} ({name})" if name else SHOW_ANYWAY
        return bool(st.toggle(label, key=key, on_change=on_change, args=args,
                              help="The model still made a prediction; on an image like this one it may be wrong, "
                                   "whatever its light."))


# -- Grad-CAM -----------------------------------------------------------------------------------


def render_cam(image: np.ndarray, heatmap: np.ndarray, mode: str, opacity: float, caption: str,
               preprocessing: dict[str, Any] | None = None) -> None:
    """Show a Grad-CAM heatmap as an overlay, beside the image, or alone, with its legend and what the model saw.

    Low heat is transparent (no tint over the skin); with ``preprocessing`` (the model's eval
    transform) the border outside the centre crop the model saw is greyed and said so. "Side by
    side" puts the image and its overlay in two columns: the viewer draws it across its whole width,
    so each picture keeps half the viewer. Only the blend is computed here (milliseconds).
    """
    seen = seen_mask(image.shape, preprocessing) if preprocessing is not None else None
    if mode == "Heatmap only":
        background = np.full_like(image, 40)
        st.image(overlay(background, heatmap, 1.0, seen), caption=caption, width="stretch", alt="Grad-CAM heatmap",
                 output_format="JPEG")
    elif mode == "Side by side":
        plain, marked = st.columns(2, gap="small")
        plain.image(image, caption="Image", width="stretch", alt="Original image", output_format="JPEG")
        marked.image(overlay(image, heatmap, float(opacity), seen), caption=caption, width="stretch",
                     alt="Grad-CAM overlay", output_format="JPEG")
    else:
        st.image(overlay(image, heatmap, float(opacity), seen), caption=caption, width="stretch",
                 alt="Grad-CAM overlay", output_format="JPEG")
    st.image(legend_strip(320, 14), width=320, alt="Colour scale: low to high attention")
    st.caption(LEGEND_CAPTION)
    if seen is not None and not seen.all():
        st.caption(UNSEEN_CAPTION)
    if float(np.max(heatmap)) <= 0.0:
        st.caption("Grad-CAM found no region that raises this output: the heatmap is empty.")


# -- model ----------------------------------------------------------------------------------------


def model_summary_lines(card: dict[str, Any], uses_metadata: bool) -> list[str]:
    """Short facts of a model card for the sidebar."""
    model_cfg = (card.get("config") or {}).get("model") or {}
    lines = [f"**{card.get('name', 'model')}** · version {card.get('version', '?')}"]
    if model_cfg.get("backbone"):
        size = (card.get("preprocessing") or {}).get("img_size", "?")
        lines.append(f"Backbone: {model_cfg['backbone']} at {size} px")
    lines.append("Inputs: image + age, sex, site" if uses_metadata else "Inputs: image only")
    if card.get("created"):
        lines.append(f"Made on {str(card['created'])[:10]}")
    calibration = card.get("calibration") or {}
    method = str(calibration.get("method", ""))
    if method.startswith("none"):
        lines.append("Calibration: none (a raw training checkpoint: its probabilities are not calibrated)")
    elif calibration.get("class_offsets"):
        lines.append("Probabilities calibrated per diagnosis on its validation images, so that, for example, "
                     "of lesions given 30% about 30% have that diagnosis")
    elif calibration.get("temperature") is not None:
        lines.append("Probabilities calibrated on its validation images (one temperature, "
                     f"{float(calibration['temperature']):.3g}), so that a given percentage is about right on average")
    return lines


def model_warnings(predictor: Any) -> list[str]:
    """What a model lacks that a bundle exported for the clinic has, in words (empty for such a bundle).

    A raw training checkpoint has no out-of-distribution statistics (an image unlike its training
    images is not made grey), no calibration and no operating points of its own; the screen says so
    instead of showing its lights as if they meant the same.
    """
    card = getattr(predictor, "card", None) or {}
    quality = getattr(predictor, "quality", None)
    lines = []
    if getattr(predictor, "feature_stats", None) is None or (quality is not None and not quality.ood_enabled):
        lines.append("This model has no check for images unlike its training images: such an image still gets a "
                     "light. Export it as a bundle (`python -m scripts.export`) before relying on its lights.")
    if not getattr(getattr(predictor, "risk", None), "chosen_on", None):
        lines.append("Its traffic-light thresholds are the clinic's fixed policy, not operating points chosen for "
                     "this model, so no sensitivity or specificity can be given for its lights.")
    if str((card.get("calibration") or {}).get("method", "")).startswith("none"):
        lines.append("Its probabilities are not calibrated (a raw training checkpoint).")
    return lines


# -- similar confirmed cases ---------------------------------------------------------------------


def reference_howto(ref_dir: Any, env_name: str) -> str:
    """Plain-words instructions for building a reference library (shown when none is available).

    Args:
        ref_dir: The configured library folder (a ``Path``), or None when none is configured.
        env_name: The environment variable naming it.
    """
    target = f"{ref_dir}/clinic_a" if ref_dir is not None else "refs/clinic_a"
    if ref_dir is None:
        where = (f"Then set the environment variable `{env_name}` to the folder holding your libraries "
                 "(here `refs`) and restart the dashboard.")
    elif not ref_dir.is_dir():
        where = f"The folder `{ref_dir}` named by `{env_name}` does not exist yet: the command above creates it."
    else:
        where = f"No library was found in `{ref_dir}` (`{env_name}`); one built there appears in the sidebar."
    return (
        "No reference library is available, so similar confirmed cases cannot be shown. Build one from your "
        "own confirmed (labelled) images: a CSV with an `image` column and a `diagnosis` or `label` column, "
        "or any label format DermaLens reads, and the folder of images:\n\n"
        f"```\npython -m scripts.build_reference --csv labels.csv --img_dir images/ --output {target}\n```\n\n"
        f"{where} The library must be built with the model loaded here."
    )


def neighbour_caption(neighbour: Any) -> str:
    """``3. MEL (malignant) · 0.91``: rank, diagnosis and cosine similarity of a similar case."""
    diagnosis = neighbour.diagnosis or ("malignant" if neighbour.malignant else "benign")
    flag = " (malignant)" if neighbour.malignant and neighbour.diagnosis else ""
    return f"{neighbour.rank}. {diagnosis}{flag} · {neighbour.similarity:.2f}"


def render_similar_cases(result: Any, per_row: int = 5) -> None:
    """The neighbours' vote, their thumbnails with diagnosis and similarity, and an enlarged view.

    Thumbnails are served from memory to this session only (each ``st.image`` also has a
    full-screen button); nothing is written anywhere.

    Args:
        result: ``backend.retrieval.SimilarCases``.
        per_row: Thumbnails per row.
    """
    vote = result.vote
    if not result.neighbours:
        st.info("The reference library has no case to compare with (it is empty, or every case is this image, "
                "lesion or patient).")
        return
    st.markdown(f"**{vote.summary()}** (MEL, BCC or SCC) · {vote.diagnosis_summary()}")
    excluded = (f" {result.n_excluded} library case(s) of this same image, or of its lesion or patient ID, were left "
                "out." if result.n_excluded else "")
    st.caption(f"Nearest confirmed cases of library **{html.escape(result.library)}** by cosine similarity of the "
               f"model's image features (1 = identical). They show what similar-looking lesions turned out to be; "
               f"they are not a diagnosis of this one.{excluded}")
    for start in range(0, len(result.neighbours), per_row):
        columns = st.columns(per_row)
        for column, neighbour in zip(columns, result.neighbours[start : start + per_row], strict=False):
            with column:
                st.image(neighbour.thumbnail, caption=neighbour_caption(neighbour), width="stretch",
                         alt=f"Similar case {neighbour.rank}: {neighbour.diagnosis or 'unknown diagnosis'}")
    with st.expander("Enlarge the similar cases"):
        for start in range(0, len(result.neighbours), 2):
            columns = st.columns(2)
            for column, neighbour in zip(columns, result.neighbours[start : start + 2], strict=False):
                with column:
                    name = CLASS_NAMES.get(neighbour.diagnosis, neighbour.diagnosis or "diagnosis unknown")
                    st.image(neighbour.thumbnail, width="stretch",
                             # The case's id, never its folders nor its patient's or lesion's ids: those
                             # belong to another patient's record, not to this screen.
                             caption=f"{neighbour_caption(neighbour)} · {name} · case {neighbour.image_id}",
                             alt=f"Similar case {neighbour.rank}, enlarged")
