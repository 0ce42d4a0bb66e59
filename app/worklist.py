"""The triage worklist: sort and filter the gallery, count images per traffic light.

Pure functions of ``(upload, prediction or None)`` pairs, so the page stays thin and unit tests need
no Streamlit session.
"""

from __future__ import annotations

from typing import Any

#: Sort orders offered above the gallery.
SORTS: tuple[str, ...] = ("Upload order", "Risk (highest first)", "Traffic light", "Quality flags first", "Name")

#: Light filter choices: the lights, the grey "not assessable" one and "not analysed" (no prediction).
NOT_ANALYSED = "none"
LIGHT_CHOICES: tuple[str, ...] = ("red", "yellow", "green", "grey", NOT_ANALYSED)
LIGHT_WORDS: dict[str, str] = {"red": "high risk", "yellow": "medium risk", "green": "low risk",
                               "grey": "not assessable", NOT_ANALYSED: "not analysed"}

#: Sorting by light or risk: an image to retake (grey) right after red, above any yellow or green one,
#: because its risk is unknown, not low, and it is best retaken while the patient is still there.
_SORT_RANK = {"red": 0, "grey": 1, "yellow": 2, "green": 3, NOT_ANALYSED: 4}

Item = tuple[Any, Any]


def light_of(pred: Any) -> str:
    """The pair's light code (``none`` while not analysed)."""
    return NOT_ANALYSED if pred is None else str(pred.traffic_light)


def sort_items(items: list[Item], how: str) -> list[Item]:
    """``items`` in the order ``how`` (one of :data:`SORTS`); ties keep upload order."""
    if how == "Risk (highest first)":  # red by risk, then not assessable (risk not shown), the rest by risk
        def by_risk(it: Item) -> tuple[int, float]:
            light = light_of(it[1])
            if light in ("grey", NOT_ANALYSED):
                return _SORT_RANK[light], 0.0
            return (0 if light == "red" else 2), -float(it[1].risk)

        return sorted(items, key=by_risk)
    if how == "Traffic light":
        return sorted(items, key=lambda it: _SORT_RANK.get(light_of(it[1]), len(_SORT_RANK)))
    if how == "Quality flags first":  # the images to retake first, most flags first
        return sorted(items, key=lambda it: -len(getattr(it[1], "flags", None) or []))
    if how == "Name":
        return sorted(items, key=lambda it: it[0].name.lower())
    return list(items)


def filter_items(items: list[Item], lights: list[str] | None = None, flagged_only: bool = False) -> list[Item]:
    """The pairs whose light is in ``lights`` (all when empty or None), with quality flags if ``flagged_only``."""
    kept = [it for it in items if not lights or light_of(it[1]) in lights]
    if flagged_only:
        kept = [it for it in kept if it[1] is not None and getattr(it[1], "flags", None)]
    return kept


def summary(items: list[Item]) -> str:
    """One line of counts per light, e.g. ``"4 images: 1 high risk · 2 low risk · 1 not assessable"``."""
    counts = {light: 0 for light in LIGHT_CHOICES}
    for _, pred in items:
        counts[light_of(pred)] = counts.get(light_of(pred), 0) + 1
    parts = [f"{n} {LIGHT_WORDS[light]}" for light, n in counts.items() if n]
    total = len(items)
    return f"{total} image{'s' if total != 1 else ''}: " + " · ".join(parts) if parts else "No images"
