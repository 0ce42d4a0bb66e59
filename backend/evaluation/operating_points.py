"""Traffic-light operating points chosen per model on its validation split, and what each light means.

The light is a triage decision on the risk index (``backend.inference.risk``): *not green* means
"look again / refer", *red* means "high suspicion". Fixed thresholds mean different things for
every model, so each bundle gets its own, chosen on its validation split:

* ``green_below``: the highest threshold at which *not green* (risk >= threshold) still catches at
  least ``min_sensitivity`` (95%) of the malignant lesions;
* ``yellow_below``: the lowest threshold at which *red* (risk >= threshold) holds at least
  ``min_specificity`` (90%) of benign lesions out of red.

When the two cross (a model that separates the validation lesions very cleanly), red starts where
green ends: the yellow band is empty, and red's specificity is then above the target. What was
achieved is always reported, never only the target. :func:`light_summary` says, on any labelled
set (the test split for the card), what share of images each light gets, the share of malignant
lesions among them, and the
sensitivity and specificity of *not green* and of *red*: the numbers the app quotes to explain a light.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backend.errors import ConfigError
from backend.inference.risk import TRAFFIC_LIGHTS, RiskConfig, traffic_light
from backend.metrics.classification import sensitivity_specificity

#: Default targets: "not green" catches >= 95% of malignant lesions; "red" holds >= 90% specificity.
MIN_SENSITIVITY = 0.95
MIN_SPECIFICITY = 0.90


def _checked(risk: Any, malignant: Any) -> tuple[np.ndarray, np.ndarray]:
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    malignant = np.asarray(malignant).reshape(-1)
    if risk.shape != malignant.shape:
        raise ValueError(f"risk ({risk.shape[0]}) and malignant labels ({malignant.shape[0]}) differ in length")
    keep = np.isfinite(risk) & (malignant >= 0)
    risk, malignant = risk[keep], malignant[keep].astype(bool)
    if not malignant.any() or malignant.all():
        raise ConfigError(
            f"operating points need malignant and benign lesions with a risk; got {int(malignant.sum())} "
            f"malignant and {int((~malignant).sum())} benign"
        )
    return risk, malignant


def choose_operating_points(
    risk: Any, malignant: Any, base: RiskConfig | None = None, min_sensitivity: float = MIN_SENSITIVITY,
    min_specificity: float = MIN_SPECIFICITY, source: str = "validation split",
) -> tuple[RiskConfig, dict[str, Any]]:
    """Thresholds of the traffic light from labelled risks (the validation split).

    Args:
        risk: Risk index per image.
        malignant: 1 malignant / 0 benign per image (negative values are skipped as unknown).
        base: Risk weights to keep (default :class:`RiskConfig` defaults); its thresholds are replaced.
        min_sensitivity: Share of malignant lesions "not green" must catch.
        min_specificity: Share of benign lesions "red" must leave out.
        source: Words naming the images the thresholds were chosen on (goes into the card).

    Returns:
        The new :class:`RiskConfig` and a record of targets and what was achieved on these images.

    Raises:
        ConfigError: Targets outside ``(0, 1)``, or no malignant or no benign lesion.
    """
    for name, value in (("min_sensitivity", min_sensitivity), ("min_specificity", min_specificity)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"operating points: {name} must be in (0, 1), got {value}")
    risk, malignant = _checked(risk, malignant)
    mal = np.sort(risk[malignant])
    ben = np.sort(risk[~malignant])
    # Not green = risk >= t. The k lowest malignant risks may fall below t: k = floor((1 - s) * n).
    k = math.floor((1.0 - min_sensitivity) * len(mal) + 1e-9)
    green_below = float(mal[min(k, len(mal) - 1)])
    # Red = risk >= t. At least m benign risks must lie below t: m = ceil(spec * n); t just above the m-th.
    m = math.ceil(min_specificity * len(ben) - 1e-9)
    yellow_below = float(np.nextafter(ben[m - 1], np.inf)) if m >= 1 else float(ben[0])
    yellow_below = max(yellow_below, green_below)
    base = base or RiskConfig()
    cfg = RiskConfig(weights=dict(base.weights), green_below=min(max(green_below, 0.0), 1.0),
                     yellow_below=min(max(yellow_below, 0.0), 1.0), chosen_on=source)
    crossed = cfg.yellow_below <= cfg.green_below  # judged after clipping: risks of exactly 1 can close the band
    cfg.validate()
    sens_ng, spec_ng = sensitivity_specificity(malignant, risk, cfg.green_below)
    sens_red, spec_red = sensitivity_specificity(malignant, risk, cfg.yellow_below)
    record = {
        "chosen_on": source,
        "n_malignant": int(malignant.sum()),
        "n_benign": int((~malignant).sum()),
        "targets": {"not_green_sensitivity": min_sensitivity, "red_specificity": min_specificity},
        "achieved": {
            "not_green_sensitivity": sens_ng, "not_green_specificity": spec_ng,
            "red_sensitivity": sens_red, "red_specificity": spec_red,
        },
        "yellow_band_empty": bool(crossed),
        "green_below": cfg.green_below,
        "yellow_below": cfg.yellow_below,
    }
    return cfg, record


def light_summary(risk: Any, malignant: Any, cfg: RiskConfig) -> dict[str, Any]:
    """What each light means on a labelled set: its share of images and of malignant lesions, and rates.

    Returns:
        ``{"n", "lights": {light: {"n", "share_of_images", "share_malignant", "malignant", "benign"}},
        "not_green": {"sensitivity", "specificity"}, "red": {"sensitivity", "specificity"}}``.
    """
    risk, malignant = _checked(risk, malignant)
    lights = np.array([traffic_light(r, cfg) for r in risk])
    per_light = {}
    for light in TRAFFIC_LIGHTS:
        sel = lights == light
        n = int(sel.sum())
        per_light[light] = {
            "n": n,
            "share_of_images": n / len(risk),
            "malignant": int((sel & malignant).sum()),
            "benign": int((sel & ~malignant).sum()),
            "share_malignant": float(malignant[sel].mean()) if n else None,
        }
    sens_ng, spec_ng = sensitivity_specificity(malignant, risk, cfg.green_below)
    sens_red, spec_red = sensitivity_specificity(malignant, risk, cfg.yellow_below)
    return {
        "n": len(risk),
        "lights": per_light,
        "not_green": {"sensitivity": sens_ng, "specificity": spec_ng},
        "red": {"sensitivity": sens_red, "specificity": spec_red},
    }
