"""Risk index, traffic light (incl. YAML overrides) and thickness bands on hand-computed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.data.schema import DIAGNOSES
from backend.errors import ConfigError
from backend.inference.quality import QualityFlag
from backend.inference.risk import (
    DEFAULT_RISK_YAML,
    RiskConfig,
    assessed_light,
    format_risk,
    light_reason,
    melanoma_likely,
    risk_decimals,
    risk_drivers,
    risk_index,
    thickness_band,
    thresholds_sentence,
    traffic_light,
)


def probs(**values: float) -> dict[str, float]:
    rest = (1.0 - sum(values.values())) / (len(DIAGNOSES) - len(values))
    return {d: values.get(d, rest) for d in DIAGNOSES}


def test_risk_index_hand_computed():
    p = probs(MEL=0.2, BCC=0.1, SCC=0.05)
    assert risk_index(p) == pytest.approx(1.5 * 0.2 + 1.3 * 0.1 + 1.0 * 0.05)  # 0.48
    assert traffic_light(risk_index(p)) == "yellow"
    assert risk_index(probs(NV=0.9, MEL=0.0, BCC=0.0, SCC=0.0)) == pytest.approx(0.0)
    assert traffic_light(0.0) == "green"


def test_risk_index_is_clipped_to_one():
    assert risk_index(probs(MEL=0.9)) == 1.0  # 1.35 before clipping
    assert traffic_light(1.0) == "red"


def test_array_form_matches_mapping():
    rng = np.random.default_rng(0)
    arr = rng.dirichlet(np.ones(len(DIAGNOSES)), size=5)
    expected = [risk_index(dict(zip(DIAGNOSES, row, strict=True))) for row in arr]
    np.testing.assert_allclose(risk_index(arr), expected)


@pytest.mark.parametrize(("risk", "light"), [
    (0.0, "green"), (0.1499, "green"), (0.15, "yellow"), (0.5999, "yellow"), (0.6, "red"), (0.95, "red"),
])
def test_traffic_light_boundaries(risk, light):
    assert traffic_light(risk) == light


def test_default_yaml_equals_the_documented_defaults():
    assert DEFAULT_RISK_YAML.is_file()
    cfg = RiskConfig.load()
    assert cfg.weights == {"MEL": 1.5, "BCC": 1.3, "SCC": 1.0}
    assert (cfg.green_below, cfg.yellow_below) == (0.15, 0.6)


def test_yaml_and_key_value_overrides(tmp_path):
    yaml_file = tmp_path / "risk.yaml"
    yaml_file.write_text("weights: {MEL: 2.0, SCC: 0.5}\ngreen_below: 0.1\nyellow_below: 0.5\n")
    cfg = RiskConfig.load(yaml_file)
    p = probs(MEL=0.2, BCC=0.5, SCC=0.1)
    assert risk_index(p, cfg) == pytest.approx(2.0 * 0.2 + 0.5 * 0.1)  # BCC not listed: weight 0
    assert traffic_light(0.45, cfg) == "yellow" and traffic_light(0.5, cfg) == "red"
    assert traffic_light(0.09, cfg) == "green"
    cfg2 = RiskConfig.load(yaml_file, overrides=["yellow_below=0.4", "weights.BCC=1"])
    assert cfg2.yellow_below == 0.4 and cfg2.weights["BCC"] == 1.0 and cfg2.weights["MEL"] == 2.0
    assert traffic_light(0.45, cfg2) == "red"


@pytest.mark.parametrize(("text", "match"), [
    ("weights: {XYZ: 1.0}\n", "unknown diagnosis 'XYZ'"),
    ("weights: {MEL: -1}\n", "risk.weights.MEL"),
    ("green_below: 0.7\nyellow_below: 0.6\n", "green_below <= yellow_below"),
    ("red_from: 0.6\n", "unknown config key 'red_from'"),
])
def test_bad_risk_yaml_is_a_clear_error(tmp_path, text, match):
    yaml_file = tmp_path / "risk.yaml"
    yaml_file.write_text(text)
    with pytest.raises(ConfigError, match=match):
        RiskConfig.load(yaml_file)


@pytest.mark.parametrize(("mm", "band"), [
    (0.0, "in situ"), (-0.3, "in situ"), (5e-7, "in situ"), (1e-6, "<0.8 mm"), (0.5, "<0.8 mm"),
    (0.7999, "<0.8 mm"), (0.8, "0.8-1 mm"), (0.9999, "0.8-1 mm"), (1.0, "1-2 mm"), (1.9999, "1-2 mm"),
    (2.0, "2-4 mm"), (3.9999, "2-4 mm"), (4.0, ">4 mm"), (25.0, ">4 mm"), (math.inf, ">4 mm"),
])
def test_thickness_bands_at_boundaries(mm, band):
    assert thickness_band(mm) == band


def test_thickness_band_of_nan_is_empty():
    assert thickness_band(float("nan")) == ""


@pytest.mark.parametrize("risk", [0.0, 0.1, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("flags", [["blurred"], ["tiny", "blank"], ["too_dark"], ["not_skin"],
                                   ["out_of_distribution"], [QualityFlag("blurred", "The image is too blurred")]])
def test_any_quality_flag_gives_grey_never_a_colour(risk, flags):
    assert assessed_light(risk, flags) == "grey"
    assert assessed_light(risk, iter(flags), RiskConfig(green_below=0.5, yellow_below=0.8)) == "grey"


def test_unflagged_image_keeps_the_model_light():
    p = probs(MEL=0.1, BCC=0.1)  # risk = 0.15 + 0.13 + 0.8 / 6 -> yellow with the defaults
    assert assessed_light(risk_index(p), []) == traffic_light(risk_index(p)) == "yellow"
    assert assessed_light(0.0, ()) == "green" and assessed_light(0.95, []) == "red"
    with pytest.raises(ValueError, match="NaN"):
        assessed_light(math.nan, ["blurred"])


def test_a_suggested_melanoma_is_likely_whatever_its_probability():
    low = probs(NV=0.6, BKL=0.19, MEL=0.12)
    assert not melanoma_likely(low) and melanoma_likely(low, suggested="MEL")
    assert not melanoma_likely(low, suggested="NV")


def test_melanoma_likely_rule():

    assert melanoma_likely(probs(MEL=0.25, NV=0.7))  # P(MEL) >= 0.2
    assert melanoma_likely(probs(NV=0.85, MEL=0.1))  # second most probable
    assert not melanoma_likely(probs(NV=0.85, BCC=0.1, MEL=0.01))
    assert not melanoma_likely({"NV": 0.6, "BKL": 0.25, "MEL": 0.15})


def test_risk_drivers_and_light_reason():

    cfg = RiskConfig(green_below=0.04, yellow_below=0.45)
    p = {**probs(BCC=0.18, MEL=0.09, SCC=0.0)}
    assert [name for name, _ in risk_drivers(p, cfg)] == ["BCC", "MEL"]  # 1.3*0.18 > 1.5*0.09 > 0
    risk = risk_index(p, cfg)
    assert light_reason(p, risk, cfg) == (f"Yellow: risk score {risk:.3f}, between 0.040 and 0.450, "
                                          "mostly from P(BCC) 18% and P(MEL) 9%.")
    assert light_reason({"NV": 1.0}, 0.0, cfg) == "Green: risk score 0.000, below 0.040."
    red = light_reason({"MEL": 0.5}, 0.75, cfg)
    assert red.startswith("Red: risk score 0.750, at or above 0.450, mostly from P(MEL) 50%")


def test_risk_drivers_leave_out_classes_that_barely_contribute():

    cfg = RiskConfig(green_below=0.04, yellow_below=0.35)
    p = probs(MEL=0.99, SCC=0.004)  # shows as "P(SCC) 0%": not a reason worth naming
    assert [name for name, _ in risk_drivers(p, cfg)] == ["MEL"]
    assert light_reason(p, 1.0, cfg) == "Red: risk score 1.000, at or above 0.350, mostly from P(MEL) 99%."
    small = probs(MEL=0.60, BCC=0.03)  # 1.3*0.03 = 0.039 < a tenth of 1.5*0.60
    assert [name for name, _ in risk_drivers(small, cfg)] == ["MEL"]
    both = probs(MEL=0.20, BCC=0.10)
    assert [name for name, _ in risk_drivers(both, cfg)] == ["MEL", "BCC"]


@pytest.mark.parametrize(("risk", "digits", "shown"), [
    (0.4123, 3, "0.412"),   # far from both thresholds: three decimals
    (0.4178, 4, "0.4178"),  # yellow, but 0.418 would read as "red from 0.418"
    (0.41811, 3, "0.418"),  # red: "0.418, red from 0.418" agrees
    (0.1256, 5, "0.12560"),  # green: 0.126 and 0.1256 would equal the threshold shown with them
])
def test_shown_risk_never_contradicts_its_light(risk, digits, shown):
    cfg = RiskConfig(green_below=0.12561, yellow_below=0.41810)
    assert risk_decimals(risk, cfg) == digits and format_risk(risk, digits) == shown
    low, high = (float(format_risk(t, digits)) for t in (cfg.green_below, cfg.yellow_below))
    value = float(shown)
    light = "green" if value < low else "yellow" if value < high else "red"
    assert light == traffic_light(risk, cfg)
    assert f"risk score {shown}," in light_reason({"MEL": 0.3}, risk, cfg)


def test_thresholds_sentence_says_where_the_thresholds_come_from():
    fixed = thresholds_sentence(RiskConfig(green_below=0.15, yellow_below=0.6))
    assert fixed == ("Green below 0.150, yellow from 0.150 to below 0.600, red from 0.600 (the clinic's fixed "
                     "policy in cfgs/inference/risk.yaml).")
    chosen = thresholds_sentence(RiskConfig(green_below=0.126, yellow_below=0.418, chosen_on="validation split"))
    assert chosen.startswith("Green below 0.126, yellow from 0.126 to below 0.418, red from 0.418 (chosen for this "
                             "model on its validation split, where yellow or red caught at least 95%")
    assert "a target on that split, not a guarantee" in chosen
