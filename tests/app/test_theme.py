"""The theme's accent colour never looks like a risk light (red, yellow or green mean risk on screen)."""

from __future__ import annotations

import colorsys

import tomllib

from tests.conftest import REPO_ROOT

# Hue ranges (degrees) a clinician reads as a traffic light: red wraps around 0, then amber/yellow, then green.
RISK_HUES = ((0, 20), (340, 360), (30, 70), (80, 160))


def hue_degrees(hex_colour: str) -> float:
    r, g, b = (int(hex_colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return colorsys.rgb_to_hls(r, g, b)[0] * 360


def test_hue_of_the_usual_risk_colours_falls_in_a_risk_range():
    for colour in ("#ff4b4b", "#d62728", "#f5c518", "#2ca02c"):  # Streamlit's default red, plotly's red/green
        assert any(lo <= hue_degrees(colour) <= hi for lo, hi in RISK_HUES), colour


def test_theme_accent_is_a_neutral_colour():
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    accent = config["theme"]["primaryColor"]
    assert not any(lo <= hue_degrees(accent) <= hi for lo, hi in RISK_HUES), accent
