"""Model screen: the loaded model's card (intended use, limitations, metrics, calibration) and the risk policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app import card_view, resources, state
from app import components as ui
from backend.evaluation.card_sections import operating_points_markdown


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


def _test_figures(card: dict[str, Any]) -> None:
    """Test-split metrics with intervals, subgroup figures and the other-clinics check."""
    rows = card_view.metric_rows(card)
    if not rows:
        return
    split = card.get("test_split") or {}
    st.subheader("Test-split figures")
    st.caption(f"{split.get('rows', '?')} held-out images never used for training or model choice; 95% "
               "bootstrap intervals with patients resampled.")
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
    metrics = card.get("validation_metrics") or {}
    if metrics:
        st.subheader("Validation metrics")
        st.dataframe([{"metric": k, "value": v} for k, v in metrics.items()], hide_index=True)
    st.subheader("Risk index and traffic light")
    weights = dict(predictor.risk.weights)
    st.markdown("risk = " + " + ".join(f"{w:g} × P({n})" for n, w in weights.items())
                + f", clipped to [0, 1]; green below {predictor.risk.green_below:.3g}, "
                f"red from {predictor.risk.yellow_below:.3g}, yellow in between.")
    meaning = operating_points_markdown(card)
    if meaning:
        st.markdown("\n".join(meaning[2:]))  # without the section heading: the subheader above names it
    _section("Calibration", card.get("calibration"))
    _section("Preprocessing", card.get("preprocessing"))
    _section("Out-of-distribution statistics", card.get("ood"))
    _section("Classes", [ui.class_label(c) for c in predictor.classes])


main()
