"""Model screen: the loaded model's card (intended use, limitations, metrics, calibration) and the risk policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app import card_view, resources, state
from app import components as ui
from backend.evaluation.card_sections import operating_points_markdown
from backend.inference.quality import FLAG_CODES
from backend.inference.risk import thresholds_sentence


def _section(title: str, value: Any) -> None:
    if value in (None, "", [], {}):
        return
    st.subheader(title)
    if isinstance(value, str):
        st.markdown(value)
    elif isinstance(value, list):
        st.markdown("\n".join(f"- {item}" for item in value))
    else:
        st.dataframe(card_view.setting_rows(value), hide_index=True)


def _settings_section(title: str, value: Any, sentence: str) -> None:
    """A card section as one plain sentence, with its settings (no paths, no tensor names) folded below."""
    if not isinstance(value, dict) or not value:
        return
    st.subheader(title)
    if sentence:
        st.markdown(sentence)
    rows = card_view.setting_rows(value)
    if rows:
        with st.expander("Settings"):
            st.dataframe(rows, hide_index=True)


def _validation_metrics(metrics: dict[str, Any]) -> None:
    """The validation split's figures with readable names, scores to 3 decimals; per-class figures apart."""
    rows = card_view.validation_rows(metrics)
    per_class = card_view.validation_class_rows(metrics, ui.class_label)
    if not rows and not per_class:
        return
    st.subheader("Validation metrics")
    st.caption("On the validation split, which chose the training checkpoint, the calibration and the "
               "traffic-light thresholds: the test-split figures are the unbiased ones.")
    if rows:
        st.dataframe(rows, hide_index=True)
    if per_class:
        st.markdown("**Per class** (validation split)")
        st.dataframe(per_class, hide_index=True)


def _test_figures(card: dict[str, Any]) -> None:
    """Test-split metrics with intervals, subgroup figures and the other-clinics check."""
    rows = card_view.metric_rows(card)
    if not rows:
        return
    split = card.get("test_split") or {}
    st.subheader("Test-split figures")
    st.caption(f"{split.get('rows', '?')} held-out images never used for training or model choice; 95% "
               "bootstrap intervals with patients resampled.")
    with st.expander("What these figures mean"):
        st.markdown("\n".join(f"- **{name}**: {words}" for name, words in card_view.FIGURE_WORDS.items()))
    st.dataframe(rows, hide_index=True)
    attributes = card_view.subgroup_attributes(card)
    if attributes:
        st.subheader("By subgroup")
        attribute = st.radio("Group by", attributes, horizontal=True, key="card_subgroup")
        st.dataframe(card_view.subgroup_rows(card, attribute), hide_index=True)
    lodo = card_view.lodo_rows(card)
    if lodo:
        st.subheader("Other clinics (leave-one-dataset-out)")
        st.caption("Each dataset was left out of training and scored on all its images; the in-domain row is "
                   "the same recipe trained on every dataset.")
        st.dataframe(lodo, hide_index=True)


def main() -> None:
    """Render the model card screen."""
    state.init()
    state.note_page("Model card")
    st.title("Model card")
    st.markdown(ui.DISCLAIMER)
    model = resources.model_sidebar()
    if model is None:
        st.warning(f"No model is loaded. Put a bundle in {resources.models_dir()} or choose one in the sidebar.")
        return
    if model.error:
        st.error(f"The selected model could not be loaded: {model.error}")
        return
    predictor = model.predictor
    card = predictor.card
    st.markdown("  \n".join(ui.model_summary_lines(card, predictor.uses_metadata)))
    source = resources.active_model_path()
    if source:  # the folder or file name only: server paths are not for the clinic's screens
        st.caption(f"Model file: {Path(source).name}")
    if card.get("status"):
        st.warning(card["status"])
    _section("Intended use", card.get("intended_use"))
    _section("Limitations", card.get("limitations"))
    _test_figures(card)
    _validation_metrics(card.get("validation_metrics") or {})
    st.subheader("Risk score and traffic light")
    weights = dict(predictor.risk.weights)
    st.markdown("risk = " + " + ".join(f"{w:g} × P({n})" for n, w in weights.items())
                + f", clipped to [0, 1]. {thresholds_sentence(predictor.risk)}")
    meaning = operating_points_markdown(card_view.without_paths(card))
    if meaning:
        st.markdown("\n".join(meaning[2:]))  # without the section heading: the subheader above names it
    calibration, pre, ood = (card.get(k) or {} for k in ("calibration", "preprocessing", "ood"))
    _settings_section("Calibration", calibration, card_view.calibration_sentence(calibration))
    _settings_section("Preprocessing", pre, " ".join(
        part for part in (card_view.preprocessing_sentence(pre), card_view.test_resolution_sentence(card)) if part))
    _settings_section("Out-of-distribution check", ood,
                      card_view.ood_sentence(ood, FLAG_CODES["out_of_distribution"]) if ood else "")
    _section("Classes", [ui.class_label(c) for c in predictor.classes])


main()
