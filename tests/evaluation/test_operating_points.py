"""Traffic-light operating points: targets met on the data they are chosen on, honest summaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from backend.errors import ConfigError
from backend.evaluation.card_sections import light_meaning, operating_points_markdown
from backend.evaluation.operating_points import choose_operating_points, light_summary
from backend.inference.risk import RiskConfig, traffic_light


def separable(n_mal: int = 200, n_ben: int = 800, strength: float = 3.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Risks in (0, 1) without ties: malignant ~ Beta(2 + s, 2), benign ~ Beta(2, 2 + s)."""
    rng = np.random.default_rng(seed)
    mal = rng.beta(2 + strength, 2, n_mal)
    ben = rng.beta(2, 2 + strength, n_ben)
    return np.concatenate([mal, ben]), np.concatenate([np.ones(n_mal, int), np.zeros(n_ben, int)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_are_met_on_the_choosing_data(seed):
    risk, label = separable(seed=seed)
    cfg, record = choose_operating_points(risk, label, min_sensitivity=0.95, min_specificity=0.90)
    lights = np.array([traffic_light(r, cfg) for r in risk])
    not_green_sens = (lights[label == 1] != "green").mean()
    red_spec = (lights[label == 0] != "red").mean()
    assert not_green_sens >= 0.95 and red_spec >= 0.90
    assert record["achieved"]["not_green_sensitivity"] == pytest.approx(not_green_sens)
    assert record["achieved"]["red_specificity"] == pytest.approx(red_spec)
    assert 0 <= cfg.green_below <= cfg.yellow_below <= 1 and cfg.chosen_on == "validation split"


def test_thresholds_are_the_tightest_that_meet_the_targets():
    risk, label = separable()
    cfg, _ = choose_operating_points(risk, label)
    # One step higher for green would miss the sensitivity target; one step lower for red, the specificity one.
    higher_green = np.nextafter(cfg.green_below, 2.0)
    assert (risk[label == 1] >= higher_green).mean() < 0.95
    benign_below = np.sort(risk[label == 0])
    lower_red = benign_below[benign_below < cfg.yellow_below].max()
    assert (risk[label == 0] < lower_red).mean() < 0.90


def test_clean_separation_empties_the_yellow_band_and_says_so():
    risk, label = separable(strength=60.0)  # nearly every malignant risk above nearly every benign one
    cfg, record = choose_operating_points(risk, label)
    assert record["yellow_band_empty"] is True and cfg.green_below == cfg.yellow_below
    assert record["achieved"]["red_specificity"] >= 0.90


def test_keeps_the_base_weights_and_rejects_bad_input():
    risk, label = separable()
    base = RiskConfig(weights={"MEL": 2.0})
    cfg, _ = choose_operating_points(risk, label, base=base, source="val split of x.csv")
    assert cfg.weights == {"MEL": 2.0} and cfg.chosen_on == "val split of x.csv"
    with pytest.raises(ConfigError, match="malignant and benign"):
        choose_operating_points(risk[label == 0], label[label == 0])
    with pytest.raises(ConfigError, match="min_sensitivity"):
        choose_operating_points(risk, label, min_sensitivity=1.0)
    with pytest.raises(ValueError, match="differ in length"):
        choose_operating_points(risk, label[:-1])


def test_light_summary_counts_add_up():
    risk, label = separable(seed=3)
    cfg = RiskConfig(green_below=0.4, yellow_below=0.7)
    summary = light_summary(risk, label, cfg)
    lights = summary["lights"]
    assert sum(v["n"] for v in lights.values()) == summary["n"] == len(risk)
    assert sum(v["malignant"] for v in lights.values()) == int(label.sum())
    assert lights["red"]["share_malignant"] == pytest.approx(label[risk >= 0.7].mean())
    assert summary["not_green"]["sensitivity"] == pytest.approx((risk[label == 1] >= 0.4).mean())
    assert summary["red"]["specificity"] == pytest.approx((risk[label == 0] < 0.7).mean())


def test_risk_config_round_trips_through_a_card():
    cfg = RiskConfig(green_below=0.1, yellow_below=0.5, chosen_on="val split")
    assert RiskConfig.from_card(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        RiskConfig.from_card({**cfg.to_dict(), "red_from": 0.3})


def test_each_light_is_explained_in_words_from_the_test_split():
    risk, label = separable(seed=4)
    cfg, record = choose_operating_points(risk, label)
    card = {"risk": cfg.to_dict(), "operating_points": {"validation": record, "test": light_summary(risk, label, cfg)}}
    red = risk >= cfg.yellow_below
    red_k, red_n = int(label[red].sum()), int(red.sum())
    ci = binomtest(red_k, red_n).proportion_ci(method="wilson")
    assert (f"{red_k} of the {red_n} red lesions ({100 * red_k / red_n:.1f}%, 95% interval {100 * ci.low:.1f}-"
            f"{100 * ci.high:.1f}%) were malignant") in light_meaning(card, "red")
    assert "caught" in light_meaning(card, "green") and "yellow" in light_meaning(card, "yellow").lower()
    test = card["operating_points"]["test"]
    sens, spec = (f"{100 * test['not_green'][k]:.1f}%" for k in ("sensitivity", "specificity"))
    n_mal, n_ben = int(label.sum()), int((label == 0).sum())
    for light in ("green", "yellow"):  # each names the sensitivity and specificity of "not green", with counts
        assert f"of the {n_mal} malignant lesions ({sens}, 95% interval" in light_meaning(card, light)
        assert "; sensitivity)" in light_meaning(card, light)
        assert "; specificity) were green" in light_meaning(card, light)
        assert f"of the {n_ben} benign lesions ({spec}, 95% interval" in light_meaning(card, light)
    yellow_share = test["lights"]["yellow"]["share_malignant"]
    assert f"yellow lesions ({100 * yellow_share:.1f}%, 95% interval" in light_meaning(card, "yellow")
    assert light_meaning({}, "red") == ""  # an older bundle without operating points says nothing rather than guess
    text = "\n".join(operating_points_markdown(card))
    assert "| red |" in text and "chosen on the validation split" in text


def test_benign_risks_of_exactly_one_close_the_band_and_the_card_says_the_target_was_missed():
    rng = np.random.default_rng(0)
    risk = np.concatenate([np.ones(20), rng.uniform(0, 0.9, 80), np.ones(30)])  # 30 of 110 benign at the clip
    label = np.concatenate([np.ones(20, int), np.zeros(110, int)])
    cfg, record = choose_operating_points(risk, label)
    assert cfg.green_below == cfg.yellow_below == 1.0 and record["yellow_band_empty"] is True
    assert record["achieved"]["red_specificity"] == pytest.approx(80 / 110)
    text = " ".join(operating_points_markdown({"risk": cfg.to_dict(), "operating_points": {"validation": record}}))
    assert "yellow band is empty" in text
    assert "\"red\" specificity target was not reached on validation: 72.7% is the nearest achievable" in text
    met, _ = choose_operating_points(*separable())
    assert "not reached" not in " ".join(operating_points_markdown(
        {"risk": met.to_dict(), "operating_points": {"validation": _}}))
