"""Risk index, traffic light and thickness band: pure functions of the model's outputs.

The risk index condenses the class probabilities into one number a clinician can triage on:
``risk = sum_d w_d * P(d)`` over the malignant diagnoses (by default ``1.5 P(MEL) + 1.3 P(BCC) +
1.0 P(SCC)``), clipped to ``[0, 1]``. Melanoma weighs most because missing it costs most; the
weights and the traffic-light thresholds are clinical policy, so they live in
``cfgs/inference/risk.yaml`` (:class:`RiskConfig`) rather than in code. A bundle's card carries
thresholds chosen for that model on its validation split (``backend.evaluation.operating_points``),
which the predictor uses in place of the file's.

Traffic light: ``green`` below ``green_below``, ``yellow`` below ``yellow_below``, ``red`` from
``yellow_below`` on. An image the quality gate flagged (blurred, too dark or blank, not skin, too
small, out of distribution...) is not assessable: :func:`assessed_light` gives it ``grey`` whatever
its risk, and the model's own light is kept beside it for a clinician who asks to see it anyway.
The thickness band maps a Breslow estimate in mm onto
:data:`backend.data.schema.THICKNESS_BANDS` (lower bound inclusive, upper bound exclusive).
No torch import here: the app and the CLIs use these functions directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.config import from_dict, load_config
from backend.data.schema import DIAGNOSES, THICKNESS_BANDS
from backend.errors import ConfigError

#: The risk configuration used when none is given.
DEFAULT_RISK_YAML = Path(__file__).resolve().parents[2] / "cfgs" / "inference" / "risk.yaml"
TRAFFIC_LIGHTS: tuple[str, ...] = ("green", "yellow", "red")
#: The light of an image the quality gate flagged: not assessable, whatever the model says.
NOT_ASSESSABLE = "grey"
#: Every light a prediction can carry.
LIGHTS: tuple[str, ...] = (*TRAFFIC_LIGHTS, NOT_ASSESSABLE)
#: Decimals a risk score and its thresholds are shown with, on every screen and export alike.
RISK_DECIMALS = 3


def _default_weights() -> dict[str, float]:
    return {"MEL": 1.5, "BCC": 1.3, "SCC": 1.0}


@dataclass
class RiskConfig:
    """Weights of the risk index and thresholds of the traffic light.

    Attributes:
        weights: Diagnosis -> weight of its probability in the risk index (diagnoses not listed
            weigh 0).
        green_below: Risk below this is green.
        yellow_below: Risk below this (and at least ``green_below``) is yellow; from here on, red.
        chosen_on: Where the thresholds come from: None for the policy file's fixed values, else the
            images they were chosen on per model (``backend.evaluation.operating_points``; a bundle
            stores its own, which the predictor uses).
    """

    weights: dict[str, float] = field(default_factory=_default_weights)
    green_below: float = 0.15
    yellow_below: float = 0.6
    chosen_on: str | None = None

    def validate(self) -> None:
        """Reject unknown diagnoses, negative weights and thresholds out of order.

        Raises:
            ConfigError: Naming the key at fault.
        """
        clean: dict[str, float] = {}
        for name, weight in self.weights.items():
            if name not in DIAGNOSES:
                raise ConfigError(f"risk.weights: unknown diagnosis {name!r}; expected some of {list(DIAGNOSES)}")
            try:
                value = float(weight)
            except (TypeError, ValueError):
                raise ConfigError(f"risk.weights.{name} must be a number, got {weight!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"risk.weights.{name} must be a finite number >= 0, got {weight!r}")
            clean[name] = value
        self.weights = clean
        if not 0.0 <= self.green_below <= self.yellow_below <= 1.0:
            raise ConfigError(
                "risk thresholds must satisfy 0 <= green_below <= yellow_below <= 1, "
                f"got green_below={self.green_below}, yellow_below={self.yellow_below}"
            )

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RiskConfig:
        """Defaults <- ``path`` (default :data:`DEFAULT_RISK_YAML` when it exists) <- ``key=value`` overrides.

        Raises:
            ConfigError: Unknown key, wrong type or a bad value, naming the file or key.
        """
        files = [Path(path)] if path is not None else [p for p in (DEFAULT_RISK_YAML,) if p.is_file()]
        return load_config(cls, files, overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (stored in model cards)."""
        return {"weights": dict(self.weights), "green_below": self.green_below, "yellow_below": self.yellow_below,
                "chosen_on": self.chosen_on}

    @classmethod
    def from_card(cls, data: dict[str, Any]) -> RiskConfig:
        """The risk configuration a bundle's card stores (:meth:`to_dict`), validated.

        Raises:
            ConfigError: Unknown keys or bad values, naming them.
        """
        return from_dict(cls, dict(data))


def risk_index(probs: Mapping[str, float] | np.ndarray, cfg: RiskConfig | None = None) -> float | np.ndarray:
    """Weighted sum of diagnosis probabilities, clipped to ``[0, 1]``.

    Args:
        probs: ``{diagnosis: probability}`` for one image, or an ``(N, 8)`` array in
            :data:`DIAGNOSES` order (also ``(8,)``).
        cfg: Weights; default :class:`RiskConfig` defaults.

    Returns:
        A float for a mapping, else an array of shape ``probs.shape[:-1]``.
    """
    cfg = cfg or RiskConfig()
    if isinstance(probs, Mapping):
        total = sum(w * float(probs.get(name, 0.0)) for name, w in cfg.weights.items())
        return float(min(max(total, 0.0), 1.0))
    arr = np.asarray(probs, dtype=np.float64)
    if arr.shape[-1] != len(DIAGNOSES):
        raise ValueError(f"probabilities must have {len(DIAGNOSES)} columns in {DIAGNOSES} order, got {arr.shape}")
    weights = np.array([cfg.weights.get(name, 0.0) for name in DIAGNOSES])
    return np.clip(arr @ weights, 0.0, 1.0)


def _light_of(risk: float, green_below: float, yellow_below: float) -> str:
    return "green" if risk < green_below else "yellow" if risk < yellow_below else "red"


def traffic_light(risk: float, cfg: RiskConfig | None = None) -> str:
    """``green`` (risk < green_below), ``yellow`` (< yellow_below) or ``red``.

    Raises:
        ValueError: When ``risk`` is NaN.
    """
    cfg = cfg or RiskConfig()
    risk = float(risk)
    if math.isnan(risk):
        raise ValueError("risk is NaN")
    return _light_of(risk, cfg.green_below, cfg.yellow_below)


def assessed_light(risk: float, flags: Iterable[Any], cfg: RiskConfig | None = None) -> str:
    """The light shown for an image: ``grey`` (not assessable) when flagged, else its traffic light.

    Any quality flag (blurred, too dark or blank, not skin, too small, out of distribution...) gives
    ``grey``: the model's light is no evidence on a picture it cannot read. An unflagged image gets
    :func:`traffic_light` of its risk.

    Args:
        risk: Risk index in ``[0, 1]``.
        flags: The image's quality flags (codes or ``QualityFlag`` objects); empty when none.
        cfg: Thresholds.

    Raises:
        ValueError: When ``risk`` is NaN.
    """
    light = traffic_light(risk, cfg)
    return NOT_ASSESSABLE if list(flags) else light


def thickness_band(mm: float) -> str:
    """The Breslow band of a thickness in mm (``in situ``, ``<0.8 mm`` ... ``>4 mm``); ``""`` for NaN.

    Bands are ``[lo, hi)``: 0.8 mm is ``0.8-1 mm``, 1.0 is ``1-2 mm``, 4.0 is ``>4 mm``; negative
    values count as 0 (in situ).
    """
    mm = float(mm)
    if math.isnan(mm):
        return ""
    mm = max(mm, 0.0)
    for name, lo, hi in THICKNESS_BANDS:
        if lo <= mm < hi:
            return name
    return THICKNESS_BANDS[-1][0]


def melanoma_likely(probs: Mapping[str, float], top_k: int = 2, min_prob: float = 0.2,
                    suggested: str | None = None) -> bool:
    """Whether melanoma is a likely class: suggested, among the ``top_k`` most probable, or ``P(MEL) >= min_prob``.

    The thickness estimate only applies to a melanoma; the app shows it muted (collapsed) otherwise.
    The suggestion is the class-balanced decision, which can be melanoma while ``P(MEL)`` is low: a
    screen suggesting melanoma must not call it unlikely in the next panel.
    """
    p_mel = float(probs.get("MEL", 0.0))
    ranked = sorted(probs, key=lambda name: float(probs[name]), reverse=True)
    return suggested == "MEL" or p_mel >= min_prob or "MEL" in ranked[:top_k]


def risk_drivers(probs: Mapping[str, float], cfg: RiskConfig | None = None, top: int = 2) -> list[tuple[str, float]]:
    """The diagnoses that contribute most to the risk index, ``(name, probability)``, largest share first.

    Contribution is ``weight * P(d)``; a diagnosis is named only when its probability shows as at least
    1% and it contributes at least a tenth of the largest contribution (no "P(SCC) 0%" beside 99% MEL).
    """
    cfg = cfg or RiskConfig()
    parts = [(w * float(probs.get(name, 0.0)), name) for name, w in cfg.weights.items()]
    largest = max((p[0] for p in parts), default=0.0)
    kept = [p for p in parts if p[0] > 0 and p[0] >= 0.1 * largest and float(probs.get(p[1], 0.0)) >= 0.005]
    ranked = sorted(kept, reverse=True)[:top]
    return [(name, float(probs.get(name, 0.0))) for _, name in ranked]


def risk_decimals(risk: float, cfg: RiskConfig | None = None) -> int:
    """Decimals to show ``risk`` and the thresholds with so the shown numbers agree with its light.

    :data:`RISK_DECIMALS`, or more for a score within rounding of a threshold: a yellow 0.4176
    beside "red from 0.418" would read as red, so it is shown as 0.4176 beside 0.4180.
    """
    cfg = cfg or RiskConfig()
    light = traffic_light(risk, cfg)
    for digits in range(RISK_DECIMALS, 10):
        shown = [round(float(v), digits) for v in (risk, cfg.green_below, cfg.yellow_below)]
        if _light_of(*shown) == light:
            return digits
    return 10


def format_risk(value: float, digits: int = RISK_DECIMALS) -> str:
    """A risk score or threshold as shown everywhere (``0.412``)."""
    return f"{float(value):.{digits}f}"


#: Said beside a risk score at the top of its scale, where the weighted sum was clipped to 1: such
#: scores do not rank against each other (a P(MEL) of 67% and of 99% both read 1.000).
AT_THE_TOP = "the top of the scale, reached by every image at least this suspicious"


def risk_words(risk: float, digits: int = RISK_DECIMALS) -> str:
    """:func:`format_risk`, saying so when the score sits at the top of its scale."""
    return format_risk(risk, digits) + (f" ({AT_THE_TOP})" if float(risk) >= 1.0 else "")


def thresholds_sentence(cfg: RiskConfig | None = None, digits: int = RISK_DECIMALS) -> str:
    """What the lights mean in numbers, and where the thresholds come from, for a clinician.

    Example: ``Green below 0.126, yellow from 0.126 to below 0.418, red from 0.418 (chosen for this
    model on its validation split, where yellow or red caught at least 95% of malignant lesions and
    red left at least 90% of benign lesions out; a target on that split, not a guarantee: the test
    split's figures say what each light meant on new images).``
    """
    cfg = cfg or RiskConfig()
    low, high = format_risk(cfg.green_below, digits), format_risk(cfg.yellow_below, digits)
    source = ("chosen for this model on its validation split, where yellow or red caught at least 95% of "
              "malignant lesions and red left at least 90% of benign lesions out; a target on that split, not a "
              "guarantee: the test split's figures say what each light meant on new images" if cfg.chosen_on else
              "the clinic's fixed policy in cfgs/inference/risk.yaml")
    return f"Green below {low}, yellow from {low} to below {high}, red from {high} ({source})."


def light_reason(probs: Mapping[str, float], risk: float, cfg: RiskConfig | None = None) -> str:
    """Why an image got its light, in one sentence with the thresholds and the classes driving the score.

    Example: ``Yellow: risk score 0.280, between 0.126 and 0.418, mostly from P(BCC) 18% and P(MEL) 9%.``
    """
    cfg = cfg or RiskConfig()
    light = traffic_light(risk, cfg)
    digits = risk_decimals(risk, cfg)
    low, high = format_risk(cfg.green_below, digits), format_risk(cfg.yellow_below, digits)
    where = {"green": f"below {low}", "yellow": f"between {low} and {high}"}.get(light, f"at or above {high}")
    drivers = risk_drivers(probs, cfg)
    source = (", mostly from " + " and ".join(f"P({name}) {p:.0%}" for name, p in drivers)) if drivers else ""
    return f"{light.capitalize()}: risk score {format_risk(risk, digits)}, {where}{source}."
