"""DermaLens clinician dashboard: ``streamlit run app/main.py``.

Page configuration and navigation only; each screen is a file in ``app/pages/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` from a clone without `pip install -e .`
    sys.path.insert(0, str(ROOT))

# "auto": the sidebar starts open on wide screens and collapsed on phones, where it would cover the image.
st.set_page_config(page_title="DermaLens", page_icon="🔬", layout="wide", initial_sidebar_state="auto")
PAGES = Path(__file__).resolve().parent / "pages"
st.navigation([
    st.Page(PAGES / "triage.py", title="Triage", icon=":material/biotech:", default=True),
    st.Page(PAGES / "followup.py", title="Follow-up", icon=":material/compare:"),
    st.Page(PAGES / "model.py", title="Model card", icon=":material/badge:"),
]).run()
