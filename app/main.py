"""DermaLens clinician dashboard (``streamlit run app/main.py``).

Until the dashboard lands this page reports which model bundle is loaded; it never crashes when
none is bundled yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` from a clone without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from backend import __version__  # noqa: E402
from backend.model_store import DEFAULT_MODEL_DIR, describe_model_dir  # noqa: E402


def main() -> None:
    """Render the status page."""
    st.set_page_config(page_title="DermaLens", page_icon="🔬", layout="wide")
    st.title("DermaLens")
    st.caption(f"Dermoscopic lesion triage — decision support, not a diagnosis. Version {__version__}.")
    status = describe_model_dir(DEFAULT_MODEL_DIR)
    if status.available:
        st.success(f"Loaded model: {status.name} ({status.path})")
    else:
        st.warning(f"No model loaded: {status.reason}")


main()
