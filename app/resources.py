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

from app import components as ui
from app import state
from backend.inference.predictor import Predictor
from backend.model_store import DEFAULT_MODEL_DIR, MODELS_DIR, WEIGHTS_FILE, describe_model_dir
from backend.retrieval.library import MANIFEST, ReferenceLibrary, ReferenceLibraryError, is_library, read_manifest

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
        predictor: ``backend.inference.predictor.Predictor``, or None on failure.
        error: The message to show (names the file), or None.
        key: :func:`model_key` of the model (part of every prediction's cache key).
    """

    predictor: Any
    error: str | None
    key: str


def _load_error(err: BaseException, path: str | Path) -> str:
    """Why ``path`` could not be loaded, naming the file but not the server folder it is in."""
    message = ui.error_words(err)
    name = Path(path).name
    for spelled in dict.fromkeys((str(Path(path).resolve()), str(path))):
        message = message.replace(spelled, name)
    return message if name in message else f"{name}: {message}"


@st.cache_resource(max_entries=4, show_spinner=False)
def load_predictor(path: str, key: str = "") -> LoadResult:
    """Load a bundle folder or ``.ckpt`` once per process (``key`` from :func:`model_key`).

    Failures are returned, not raised, so a bad checkpoint shows its message and the app goes on
    (and the failure is not retried on every rerun; a changed file gets a new key).
    """
    try:
        return LoadResult(Predictor.from_checkpoint(path), None, key)
    except Exception as err:  # a bad file or a backend bug must not take the dashboard down
        return LoadResult(None, _load_error(err, path), key)


def active_model_path() -> str | None:
    """The session's chosen model, else the default one (None when neither exists)."""
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

    state.set_model_path(st.session_state.get("model_picker"))


def model_sidebar() -> LoadResult | None:
    """The sidebar's model section: picker over the models folder, load status and a card summary.

    Returns:
        The session's model (maybe with an error), or None when there is none to load.
    """
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
            for warning in ui.model_warnings(result.predictor):
                st.warning(warning)
            st.page_link("pages/model.py", label="Full model card", icon=":material/badge:")
    return result


# -- reference libraries ("Similar confirmed cases") -----------------------------------------------

REFERENCE_DIR_ENV = "DERMALENS_REFERENCE_DIR"
#: What the library picker offers to turn the panel off.
REFERENCE_OFF = "__off__"


def reference_dir() -> Path | None:
    """The folder whose sub-folders are reference libraries (``DERMALENS_REFERENCE_DIR``), or None."""
    value = os.environ.get(REFERENCE_DIR_ENV, "").strip()
    return Path(value) if value else None


@dataclass(frozen=True)
class ReferenceOption:
    """A reference library the sidebar offers.

    Attributes:
        path: The library folder.
        label: What the picker shows (name, number of cases, or why it is not usable).
        weights_sha256: The weights the library was embedded with (its manifest's), or "" when unknown.
    """

    path: str
    label: str
    weights_sha256: str = ""


def list_references() -> list[ReferenceOption]:
    """Library folders under :func:`reference_dir` (the folder itself too, when it is one); no torch import."""
    root = reference_dir()
    if root is None or not root.is_dir():
        return []
    candidates = [root] if is_library(root) else []
    candidates += sorted(p for p in root.iterdir() if p.is_dir() and is_library(p))
    options = []
    for path in candidates[:MAX_LISTED]:
        weights = ""
        try:
            manifest = read_manifest(path)
            detail = f"{manifest.get('n_rows', 0)} cases" if manifest.get("complete") else "incomplete build"
            weights = str((manifest.get("model") or {}).get("weights_sha256") or "")
        except ReferenceLibraryError:
            detail = "unreadable"
        options.append(ReferenceOption(str(path), f"{path.name} ({detail})", weights))
    return options


def reference_key(path: str | Path) -> str:
    """Cache key of a library: its resolved path and the modification time of its manifest."""
    path = Path(path).resolve()
    try:
        stamp = (path / MANIFEST).stat().st_mtime_ns
    except OSError:
        stamp = 0
    return f"{path}@{stamp}"


@dataclass(frozen=True)
class ReferenceLoad:
    """A loaded reference library, or why it could not be loaded.

    Attributes:
        library: ``backend.retrieval.ReferenceLibrary``, or None on failure.
        error: The message to show, or None.
        key: :func:`reference_key` of the library (part of each upload's similar-cases cache key).
        path: The library folder.
    """

    library: Any
    error: str | None
    key: str
    path: str


@st.cache_resource(max_entries=4, show_spinner=False)
def load_reference(path: str, key: str = "") -> ReferenceLoad:
    """Load a reference library once per process (``key`` from :func:`reference_key`).

    The library holds the clinic's own reference images and embeddings, never a user's upload,
    so sharing it between sessions is safe. Failures are returned, not raised.
    """
    try:
        return ReferenceLoad(ReferenceLibrary.load(path), None, key, path)
    except Exception as err:  # a damaged library must not take the dashboard down
        return ReferenceLoad(None, f"could not be loaded: {_load_error(err, path)}", key, path)


def _on_pick_reference() -> None:

    state.set_reference_path(st.session_state.get("reference_picker"))


def reference_sidebar(model_weights: str = "") -> ReferenceLoad | None:
    """The sidebar's reference-library picker; returns the session's loaded library or None (none or off).

    ``model_weights`` (the loaded model's weights SHA-256) picks, until the user picks another, the
    first library embedded with this model, and names the others as built with another model.
    """
    options = list_references()
    if model_weights:
        options = [o if o.weights_sha256 in ("", model_weights) else
                   ReferenceOption(o.path, f"{o.label[:-1]}; built with another model)", o.weights_sha256)
                   for o in options]
        options.sort(key=lambda o: o.weights_sha256 != model_weights)  # this model's libraries first
    with st.sidebar:
        st.header("Reference library")
        if not options:
            st.caption("None available: see the Similar confirmed cases panel for how to build one.")
            return None
        paths = [o.path for o in options]
        labels = {o.path: o.label for o in options}
        labels[REFERENCE_OFF] = "Off"
        chosen = state.reference_path()
        current = chosen if chosen in (*paths, REFERENCE_OFF) else paths[0]
        choices = [*paths, REFERENCE_OFF]
        st.selectbox("Similar confirmed cases from", choices, index=choices.index(current),
                     format_func=lambda p: labels.get(p, p), key="reference_picker", on_change=_on_pick_reference,
                     help=f"Libraries built with scripts.build_reference, found in {reference_dir()}")
    if current == REFERENCE_OFF:
        return None
    with st.spinner(f"Loading reference library {Path(current).name}…"):
        return load_reference(current, reference_key(current))
