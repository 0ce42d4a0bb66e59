"""Fixtures of the dashboard tests: tiny model bundles, the env vars pointing the app at them, images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.app.tiny_models import TinyModels, tiny_models_dir
from tests.conftest import make_lesion_image

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Two tiny trained bundles (fusion = default, image-only) and two bad checkpoints, once per session."""
    return tiny_models_dir(tmp_path_factory)


@pytest.fixture
def app_env(tiny_models, monkeypatch) -> TinyModels:
    """Point ``DERMALENS_MODELS_DIR`` / ``DERMALENS_MODEL`` at the tiny models for this test."""
    for key, value in tiny_models.env().items():
        monkeypatch.setenv(key, value)
    return tiny_models


def new_app():
    """A fresh AppTest session of the dashboard (not yet run)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=60)


def image_bytes(seed: int, fmt: str = "PNG", size: int = 64, exif: bool = False) -> bytes:
    """A synthetic lesion picture encoded as ``fmt``; with ``exif`` a camera make and GPS block are embedded."""
    from PIL import Image

    picture = Image.fromarray(make_lesion_image(np.random.default_rng(seed), size))
    buffer = io.BytesIO()
    if exif:
        data = Image.Exif()
        data[0x010F] = "SecretCamMaker"  # Make
        data[0x0110] = "PatientPhone 9"  # Model
        data[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPS IFD
        picture.save(buffer, format=fmt, exif=data)
    else:
        picture.save(buffer, format=fmt)
    return buffer.getvalue()


MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "TIFF": "image/tiff"}


def upload(at, *files: tuple[str, bytes, str]):
    """Upload ``(name, bytes, mime)`` files through the page's file uploader and rerun."""
    uploader = at.get("file_uploader")[0]
    for name, data, mime in files:
        uploader.upload(name, data, mime)
    return uploader.run()


def session_uploads(at) -> dict:
    """The AppTest session's uploads (``app.state.UPLOADS``), empty when none."""
    return dict(at.session_state["dl_uploads"]) if "dl_uploads" in at.session_state else {}


def card_buttons(at) -> list:
    """The gallery cards' Select buttons."""
    return [b for b in at.button if str(b.key or "").startswith("select_")]


def texts(elements) -> str:
    """All values of a list of text elements joined (for substring assertions)."""
    return "\n".join(str(e.value) for e in elements)
