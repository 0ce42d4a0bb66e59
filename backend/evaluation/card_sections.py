"""Markdown sections of the model card for what a clinician asks of a light, and a reader of a start.

* :func:`operating_points_markdown`: the traffic-light thresholds, the validation targets they were
  chosen for and what each light means on the test split (share of images, share malignant,
  sensitivity and specificity of "not green" and of "red").
* :func:`variants_markdown`: headline test figures on the plain split and its acquisition variants
  (squashed, dermoscope border), beside a baseline model's on the same images, and each variant's
  change from the plain split with its paired interval (:func:`changes_markdown`).
* :func:`start_weights_markdown`: which pretrained weights the model started from, their licence and
  how a user on a fresh machine obtains them.
"""

from __future__ import annotations

from typing import Any

from scipy.stats import binomtest

from backend.inference.risk import format_risk

#: Headline figures in the variants table, with their names in the card's words.
HEADLINE_NAMES = {
    "auroc_malignant": "malignant AUROC",
    "auroc_melanoma": "melanoma vs rest AUROC",
    "balanced_accuracy": "8-class balanced accuracy",
}


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _ci(entry: Any) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    lo, hi = entry.get("lo"), entry.get("hi")
    text = f"{entry['value']:.3f}"
    if lo is not None and hi is not None:
        text += f" ({lo:.3f}-{hi:.3f})"
    return text


def _below(achieved: Any, target: Any) -> bool:
    """Whether an achieved rate is short of its target (False when either is unknown)."""
    return achieved is not None and target is not None and float(achieved) < float(target) - 1e-12


def operating_points_markdown(card: dict[str, Any]) -> list[str]:
    """Lines of the "What the traffic light means" section (empty when the card has no operating points)."""
    ops, risk = card.get("operating_points") or {}, card.get("risk") or {}
    if not ops:
        return []
    val, test = ops.get("validation") or {}, ops.get("test") or {}
    lines = ["## What the traffic light means", ""]
    if val:
        targets, got = val.get("targets", {}), val.get("achieved", {})
        lines += [
            f"Thresholds on the risk score, chosen on the {val.get('chosen_on')}: green below "
            f"{format_risk(risk.get('green_below', float('nan')))}, "
            f"red from {format_risk(risk.get('yellow_below', float('nan')))}. "
            f"Targets: \"not green\" catches at least {_pct(targets.get('not_green_sensitivity'))} of malignant "
            f"lesions (achieved {_pct(got.get('not_green_sensitivity'))} on validation); \"red\" leaves at least "
            f"{_pct(targets.get('red_specificity'))} of benign lesions out "
            f"(achieved {_pct(got.get('red_specificity'))})."
            + (" The two thresholds crossed, so the yellow band is empty." if val.get("yellow_band_empty") else "")
            + "".join(f" The {what} target was not reached on validation: {_pct(got.get(key))} is the nearest "
                      "achievable." for key, what in (("not_green_sensitivity", "\"not green\" sensitivity"),
                                                      ("red_specificity", "\"red\" specificity"))
                      if _below(got.get(key), targets.get(key))),
            "",
        ]
    if test:
        lines += [
            f"On the test split ({test.get('n')} images):", "",
            "| light | share of images | malignant / benign | share malignant |",
            "| --- | --- | --- | --- |",
        ]
        for light, row in (test.get("lights") or {}).items():
            lines.append(f"| {light} | {_pct(row.get('share_of_images'))} | {row.get('malignant')} / "
                         f"{row.get('benign')} | {_pct(row.get('share_malignant'))} |")
        ng, red = test.get("not_green", {}), test.get("red", {})
        lines += [
            "",
            f"\"Not green\" (yellow or red) caught {_pct(ng.get('sensitivity'))} of malignant lesions "
            f"(sensitivity) and left {_pct(ng.get('specificity'))} of benign lesions green (specificity). "
            f"\"Red\" caught {_pct(red.get('sensitivity'))} of malignant lesions at {_pct(red.get('specificity'))} "
            "specificity.",
            "",
        ]
    return lines


def variants_markdown(card: dict[str, Any]) -> list[str]:
    """Lines of the acquisition-variants section, with the baseline's figures where scored."""
    variants = card.get("test_variants") or {}
    metrics, words = variants.get("metrics") or {}, variants.get("descriptions") or {}
    if not metrics:
        return []
    baseline = card.get("baseline") or {}
    base_metrics = baseline.get("metrics") or {}
    this = f"{card.get('name')} {card.get('version')}"
    head = ["variant", *(f"{HEADLINE_NAMES[k]}: {this}" for k in HEADLINE_NAMES)]
    if base_metrics:
        head += [f"{HEADLINE_NAMES[k]}: {baseline.get('name')}" for k in HEADLINE_NAMES]
    lines = [
        "## Robustness to acquisition (test split, 95% intervals)", "",
        *(f"- **{name}**: {words.get(name, '')}" for name in metrics), "",
        "| " + " | ".join(head) + " |", "|" + " --- |" * len(head),
    ]
    for name, figures in metrics.items():
        cells = [name, *(_ci(figures.get(k)) for k in HEADLINE_NAMES)]
        if base_metrics:
            cells += [_ci((base_metrics.get(name) or {}).get(k)) for k in HEADLINE_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    if base_metrics:
        lines += ["", f"Baseline: {baseline.get('name')} ({baseline.get('model')}), scored on the same images."]
    return [*lines, "", *changes_markdown(variants.get("changes") or {}, this)]


def _signed(entry: Any) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    def signed(x: float) -> str:
        return f"{round(x, 3) + 0.0:+.3f}"  # + 0.0: a change that rounds to zero is +0.000, not -0.000

    text = signed(entry["value"])
    lo, hi = entry.get("lo"), entry.get("hi")
    if lo is not None and hi is not None:
        text += f" ({signed(lo)} to {signed(hi)})"
    return text


def changes_markdown(changes: dict[str, Any], model: str) -> list[str]:
    """Lines of the table of each variant's change from the plain split, with paired intervals."""
    if not changes:
        return []
    head = ["variant", *(HEADLINE_NAMES[k] for k in HEADLINE_NAMES)]
    lines = [
        f"Change of {model}'s figures from the plain split, on the same images (95% intervals of the change "
        "itself: both versions of each image are scored on the same resampled patients, so the interval is "
        "much narrower than the two intervals above read side by side; one that contains 0 is a change the "
        "test split cannot tell from chance):", "",
        "| " + " | ".join(head) + " |", "|" + " --- |" * len(head),
    ]
    for name, figures in changes.items():
        lines.append("| " + " | ".join([name, *(_signed((figures or {}).get(k)) for k in HEADLINE_NAMES)]) + " |")
    return [*lines, ""]


def start_weights_markdown(card: dict[str, Any]) -> list[str]:
    """Lines naming the start weights, their licence and how to obtain them."""
    start = card.get("start_weights") or {}
    if not start:
        return []
    return [
        "## Start weights", "",
        f"- Weights: {start.get('name')}", f"- Licence: {start.get('licence')}",
        f"- How to obtain them: {start.get('obtain')}", "",
    ]


def test_resolution_line(card: dict[str, Any]) -> str | None:
    """One sentence on the side the model predicts at and how it was chosen (None without a choice)."""
    record = card.get("test_resolution") or {}
    if not record:
        return None
    scores = ", ".join(f"{r['img_size']} px {r['batchnorm']} {r['auroc_malignant']:.3f}"
                       for r in record.get("candidates") or [])
    return (f"Predicts at {record.get('img_size')} px (trained at {record.get('train_img_size')} px; BatchNorm "
            f"{record.get('batchnorm')}), the side with the best {record.get('chosen_by')} ({scores}).")


def _share(k: int, n: int, what: str, measure: str = "") -> str:
    """``"29 of the 1,304 green lesions (2.2%, 95% interval 1.6-3.2%)"``: a count, its share and interval."""
    if n <= 0:
        return f"none of the 0 {what}"
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    named = f"; {measure}" if measure else ""
    interval = f"95% interval {100 * ci.low:.1f}-{100 * ci.high:.1f}%"
    return f"{k:,} of the {n:,} {what} ({100 * k / n:.1f}%, {interval}{named})"


def light_meaning(card: dict[str, Any], light: str) -> str:
    """One sentence, in a clinician's words, on what ``light`` meant on the model's test split.

    Every share is given as a count out of its total, with a 95% Wilson interval (images counted
    as independent; the card's patient-resampled intervals are wider where a patient has many
    images). Empty when the card has no test-split operating points (older bundles, raw checkpoints).
    """
    test = (card.get("operating_points") or {}).get("test") or {}
    lights = test.get("lights") or {}
    if not lights.get(light):
        return ""
    mal = {name: int((lights.get(name) or {}).get("malignant") or 0) for name in ("green", "yellow", "red")}
    ben = {name: int((lights.get(name) or {}).get("benign") or 0) for name in ("green", "yellow", "red")}
    malignant, benign = sum(mal.values()), sum(ben.values())
    share = _share(mal[light], mal[light] + ben[light], f"{light} lesions")
    caught = (f"yellow or red caught {_share(malignant - mal['green'], malignant, 'malignant lesions', 'sensitivity')}"
              f", and {_share(ben['green'], benign, 'benign lesions', 'specificity')} were green")
    if light == "green":
        return f"Green: on this model's test split, {share} were malignant; {caught}."
    if light == "red":
        return (f"Red: on this model's test split, {share} were malignant; red was given to "
                f"{_share(mal['red'], malignant, 'malignant lesions')} and "
                f"{_share(ben['red'], benign, 'benign lesions')}.")
    return (f"Yellow: between the two thresholds; on this model's test split {share} were malignant (green "
            f"{_pct((lights.get('green') or {}).get('share_malignant'))}, red "
            f"{_pct((lights.get('red') or {}).get('share_malignant'))}); {caught}. Review it clinically.")


def band_accuracy_sentence(card: dict[str, Any]) -> str:
    """How often the thickness band was right on the test split, in words; empty when the card has no figure.

    Reads ``test_metrics.thickness_band_accuracy`` (a number or ``{"value", "lo", "hi", "n"}``).
    """
    entry = (card.get("test_metrics") or {}).get("thickness_band_accuracy")
    value = entry.get("value") if isinstance(entry, dict) else entry
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    if value != value:  # NaN: no melanoma with a known thickness in the test split
        return ""
    text = f"The model's band was correct in {value:.0%} of test melanomas with a known thickness"
    if isinstance(entry, dict) and entry.get("lo") is not None and entry.get("hi") is not None:
        lo, hi = float(entry["lo"]), float(entry["hi"])
        if lo == lo and hi == hi:
            text += f" (95% interval {lo:.0%}-{hi:.0%})"
    if isinstance(entry, dict) and entry.get("n"):
        text += f", n = {int(entry['n'])}"
    return text + "."
