"""Models for the dashboard: where they are, which to offer, and the one ``st.cache_resource``.

A model is loaded once per server process and shared by every session (``load_predictor``, keyed
by its path and the modification time of its weights, so a re-exported bundle is reloaded).
Patient data is never cached here. ``DERMALENS_MODELS_DIR`` overrides the models folder and
``DERMALENS_MODEL`` the default model (tests point both at a tiny bundle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from backend.model_store import DEFAULT_MODEL_DIR, MODELS_DIR, WEIGHTS_FILE, describe_model_dir

MODELS_DIR_ENV = "DERMALENS_MODELS_DIR"
DEFAULT_MODEL_ENV = "DERMALENS_MODEL"
#: At most this many checkpoints are listed from the models folder.
MAX_LISTED = 200


def models_dir() -> Path:
    """The folder the sidebar lists models from."""
    return Path(os.environ.get(MODELS_DIR_ENV) or MODELS_DIR)


def default_model_path() -> Path:
    """The model loaded at start without any click."""
    return Path(os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL_DIR)


@dataclass(frozen=True)
class ModelOption:
    """A model the sidebar offers.

    Attributes:
        path: Bundle folder or ``.ckpt`` file.
        label: What the picker shows.
        is_default: Whether it is the default model.
    """

    path: str
    label: str
    is_default: bool = False


def default_model_problem() -> str | None:
    """Why the default model cannot be offered, or None when it looks loadable."""
    path = default_model_path()
    if path.is_file():
        return None if path.suffix == ".ckpt" else f"{path} is not a bundle folder or a .ckpt file"
    status = describe_model_dir(path)
    return None if status.available else status.reason


def _label(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = path
    if path.is_dir():
        status = describe_model_dir(path)
        return f"{status.name} ({rel})" if status.name and status.name != path.name else str(rel)
    return str(rel)


def list_models() -> list[ModelOption]:
    """The default model (first, when loadable), then bundles and ``.ckpt`` files of the models folder.

    No torch import: bundles are recognised by their files (``backend.model_store``).
    """
    root = models_dir()
    default = default_model_path()
    options: list[ModelOption] = []
    if default_model_problem() is None:
        options.append(ModelOption(str(default), f"Default: {_label(default, root)}", True))
    found: list[Path] = []
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if p.is_dir() and describe_model_dir(p).available)
        found += sorted(p for p in root.rglob("*.ckpt") if p.is_file())[:MAX_LISTED]
    seen = {Path(o.path).resolve() for o in options}
    for path in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            options.append(ModelOption(str(path), _label(path, root)))
    return options


def model_key(path: str | Path) -> str:
    """Cache key of a model: its resolved path and the modification time of its weights."""
    path = Path(path).resolve()
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    try:
        stamp = weights.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return f"{path}@{stamp}"


@dataclass(frozen=True)
class LoadResult:
    """A loaded model, or why it could not be loaded.

    Attributes:
        predictor: ``backend.inference.Predictor``, or None on failure.
        error: The message to show (names the file), or None.
        key: :func:`model_key` of the model (part of every prediction's cache key).
    """

    predictor: Any
    error: str | None
    key: str


@st.cache_resource(max_entries=4, show_spinner=False)
def load_predictor(path: str, key: str = "") -> LoadResult:
    """Load a bundle folder or ``.ckpt`` once per process (``key`` from :func:`model_key`).

    Failures are returned, not raised, so a bad checkpoint shows its message and the app goes on
    (and the failure is not retried on every rerun; a changed file gets a new key).
    """
    from backend.errors import DermaLensError
    from backend.inference import Predictor

    try:
        return LoadResult(Predictor.from_checkpoint(path), None, key)
    except DermaLensError as err:
        return LoadResult(None, f"{type(err).__name__}: {err}", key)
    except Exception as err:  # a backend bug must not take the dashboard down
        return LoadResult(None, f"{path}: could not be loaded ({type(err).__name__}: {err})", key)


def active_model_path() -> str | None:
    """The session's chosen model, else the default one (None when neither exists)."""
    from app import state

    chosen = state.model_path()
    if chosen:
        return chosen
    return str(default_model_path()) if default_model_problem() is None else None


def active_predictor() -> LoadResult | None:
    """Load the session's model (cached per process); None when there is no model to load."""
    path = active_model_path()
    if path is None:
        return None
    with st.spinner(f"Loading model {Path(path).name}…"):
        return load_predictor(path, model_key(path))


def _on_pick() -> None:
    from app import state

    state.set_model_path(st.session_state.get("model_picker"))


def model_sidebar() -> LoadResult | None:
    """The sidebar's model section: picker over the models folder, load status and a card summary.

    Returns:
        The session's model (maybe with an error), or None when there is none to load.
    """
    from app import components as ui
    from app import state

    options = list_models()
    problem = default_model_problem()
    with st.sidebar:
        st.header("Model")
        if problem is not None and not state.model_path():
            st.warning(f"The default model is not available: {problem}. Choose a model below.")
        paths = [o.path for o in options]
        labels = {o.path: o.label for o in options}
        current = active_model_path()
        if options:
            st.selectbox("Bundle or checkpoint", paths, index=paths.index(current) if current in paths else None,
                         format_func=lambda p: labels.get(p, p), key="model_picker", placeholder="Choose a model",
                         on_change=_on_pick, help=f"Models folder: {models_dir()}")
        else:
            st.error(f"No model bundles or .ckpt files in {models_dir()}.")
        result = active_predictor()
        if result is not None and result.error:
            st.error(result.error)
        elif result is not None:
            st.markdown("  \n".join(ui.model_summary_lines(result.predictor.card, result.predictor.uses_metadata)))
            st.page_link("pages/model.py", label="Full model card", icon=":material/badge:")
    return result
