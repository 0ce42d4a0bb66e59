"""Follow-up results in a clinician's words: pure functions over a ``FollowUpResult`` (no Streamlit).

The Follow-up screen stays a thin layout and the wording is unit-tested.
"""

from __future__ import annotations

from typing import Any

from backend.data.sites import MISSING_TOKENS
from backend.followup.change import BORDER_FLAG, COLOUR_FLAG, RISK_FLAG, SIZE_FLAG
from backend.inference.risk import NOT_ASSESSABLE, format_risk

CAUTION = (
    "**Measured change supports, not replaces, clinical judgement.** Sizes and colours are measured "
    "on two photos aligned by the skin around the lesion; lighting, focus, pressure of the "
    "dermatoscope and the segmentation itself all add uncertainty (about +-10% in area on the "
    "project's benchmark). Examine the patient and compare the photos yourself."
)


def _relative(value: float, noun: str, larger: str = "larger", smaller: str = "smaller") -> str:
    if abs(value) < 0.005:
        return f"The lesion's {noun} is the same as at the first visit."
    word = larger if value > 0 else smaller
    return f"The lesion's {noun} is {abs(value):.0%} {word} than at the first visit."


def measure_sentences(result: Any) -> list[str]:
    """The measured change as plain sentences, most important first (empty when not aligned).

    Args:
        result: A ``FollowUpResult``.
    """
    if not result.aligned:
        return []
    lines = []
    if result.area_change is not None:
        lines.append(_relative(result.area_change, "area").replace("The lesion's area is", "The lesion is", 1)
                     .replace("larger than", "larger in area than").replace("smaller than", "smaller in area than")
                     .replace("The lesion is the same", "The lesion's area is the same"))
    if result.diameter_change is not None:
        lines.append(_relative(result.diameter_change, "largest diameter", "longer", "shorter"))
    if result.colour_change is not None:
        if result.colour_change < 3:
            words = "hardly changed (a difference the eye barely sees)"
        elif result.colour_change < 8:
            words = "changed slightly"
        else:
            words = "changed clearly"
        lines.append(f"Its average colour has {words}: delta E {result.colour_change:.1f}, after correcting for "
                     "the lighting of each photo.")
    if result.border_change is not None:
        if result.border_change >= 0.05:
            lines.append("Its border has become more irregular (more notches or lobes).")
        elif result.border_change <= -0.05:
            lines.append("Its border has become more regular.")
        else:
            lines.append("Its border is about as regular as before.")
    lines.extend(risk_sentences(result))
    return lines


def risk_sentences(result: Any) -> list[str]:
    """The model's risk at both visits in words (empty without a model).

    Args:
        result: A ``FollowUpResult``.
    """
    if result.risk_before is None or result.risk_after is None:
        return []
    if not result.risk_comparable:
        unreadable = [when for when, light in (("baseline", result.light_before), ("follow-up", result.light_after))
                      if light == NOT_ASSESSABLE]
        return [f"The model cannot assess the {' and the '.join(unreadable)} photo (see the quality warning "
                "below), so no risk is given for this pair: retake that photo to compare the model's risk."]
    digits = result.risk_digits
    lines = [f"The model's risk score went from {format_risk(result.risk_before, digits)} ({result.light_before}) "
             f"at the first visit to {format_risk(result.risk_after, digits)} ({result.light_after}) now."]
    if result.embedding_distance is not None:
        distance = result.embedding_distance
        if distance < 0.1:
            seen = "very similar"
        elif distance < 0.3:
            seen = "somewhat different"
        else:
            seen = "clearly different"
        lines.append(f"The model sees the two photos as {seen} (feature distance {distance:.2f}).")
    return lines


def metric_values(result: Any) -> list[tuple[str, str, str | None]]:
    """``(label, value, delta)`` for the headline metrics of an aligned comparison.

    Args:
        result: A ``FollowUpResult``.
    """
    rows: list[tuple[str, str, str | None]] = []
    if result.area_change is not None:
        rows.append(("Area change", f"{result.area_change:+.0%}", None))
    if result.diameter_change is not None:
        rows.append(("Largest diameter change", f"{result.diameter_change:+.0%}", None))
    if result.colour_change is not None:
        rows.append(("Colour change (delta E)", f"{result.colour_change:.1f}", None))
    if result.risk_comparable:
        rows.append(("Model risk now", format_risk(result.risk_after, result.risk_digits),
                     f"{result.risk_after - result.risk_before:+.{result.risk_digits}f}"))
    return rows


def caution_flags(result: Any) -> list[str]:
    """Flags that qualify the measurement (alignment, edges, image quality) rather than report a change.

    Args:
        result: A ``FollowUpResult``.
    """
    keys = ("could not align", "edge of the skin", "aligned on the lesion", "quality check", "no lesion found")
    return [f for f in result.flags if any(k in f for k in keys)]


#: What the follow-up screen calls a change worth review, in words (the thresholds of ``change_flags``).
CHANGE_THRESHOLDS = (f"area or largest diameter changed by {SIZE_FLAG:.0%} or more, colour by delta E "
                     f"{COLOUR_FLAG:g} or more, border irregularity by {BORDER_FLAG:g} or more, or the model's "
                     f"light changed or its risk score rose by {RISK_FLAG:g} or more")


def change_findings(result: Any) -> list[str]:
    """The flags that report a change (growth, shrinking, colour, border, risk), without the caution flags."""
    caution = set(caution_flags(result))
    return [f for f in result.flags if f not in caution]


def findings_markdown(result: Any) -> tuple[bool, str]:
    """``(any change, markdown)``: the changes worth review as a list, or that none passed the thresholds."""
    findings = change_findings(result)
    if findings:
        lines = "\n".join(f"- {f[0].upper() + f[1:]}" for f in findings)
        return True, f"**Changes to review** ({CHANGE_THRESHOLDS}):\n\n{lines}"
    return False, f"No change reached the review thresholds ({CHANGE_THRESHOLDS})."


def default_pair(uploads: dict[str, Any]) -> tuple[str, str] | None:
    """The worklist pair to compare unless the clinician picks one: the first two images of one lesion ID.

    With only two images in the worklist, those two, unless their lesion IDs say they are two lesions.
    Otherwise none: two unrelated lesions must not be put side by side as "the same lesion" by
    default. A placeholder ID ("unknown", "NA"...) is no ID.
    """
    by_lesion: dict[str, str] = {}
    for uid, upload in uploads.items():
        lesion = str(getattr(upload, "lesion_id", "") or "").strip()
        if lesion.lower() in MISSING_TOKENS:
            continue
        if lesion in by_lesion:
            return by_lesion[lesion], uid
        by_lesion[lesion] = uid
    if len(uploads) != 2 or len(by_lesion) == 2:  # two images with two different lesion IDs: two lesions
        return None
    return tuple(uploads)  # type: ignore[return-value]
