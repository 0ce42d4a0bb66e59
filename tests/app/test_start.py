"""Start-up: the default model loads once without a click; a missing default or a bad checkpoint never crashes."""

from __future__ import annotations

import pytest

from app import components
from tests.app.conftest import MIME, card_buttons, image_bytes, new_app, session_uploads, texts, upload


def test_starts_with_default_model_loaded_once(app_env, monkeypatch):
    from app import resources
    from backend.inference.predictor import Predictor

    resources.load_predictor.clear()
    calls = []
    original = Predictor.from_checkpoint.__func__
    monkeypatch.setattr(Predictor, "from_checkpoint",
                        classmethod(lambda cls, path, **kw: calls.append(str(path)) or original(cls, path, **kw)))
    first = new_app().run()
    assert not first.exception
    assert first.title[0].value == "DermaLens"
    assert "Decision support, not a diagnosis" in texts(first.markdown)
    sidebar = texts(first.sidebar.markdown)
    assert "Tiny fusion" in sidebar and "version test-1" in sidebar and "image + age, sex, site" in sidebar
    assert first.selectbox(key="model_picker").value == str(app_env.fusion)
    assert not first.error and not first.main.warning
    # The tiny bundle was exported without data: no out-of-distribution statistics, no operating points.
    assert "no check for images unlike its training images" in texts(first.sidebar.warning)
    second = new_app().run()  # another session: same process, same cached model
    assert not second.exception and "Tiny fusion" in texts(second.sidebar.markdown)
    assert calls == [str(app_env.fusion)]
    assert [w.value for w in first.sidebar.warning] == components.model_warnings(
        Predictor.from_checkpoint(app_env.fusion))


def test_missing_default_model_shows_message_and_picker(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DERMALENS_MODEL", str(tmp_path / "no_such_model"))
    at = new_app().run()
    assert not at.exception
    assert "default model is not available" in texts(at.sidebar.warning)
    assert "no_such_model" in texts(at.sidebar.warning)
    assert "No model is loaded" in texts(at.main.warning)
    picker = at.selectbox(key="model_picker")
    assert picker.value is None
    assert picker.options == ["Tiny fusion (tiny-fusion)", "Tiny image-only (tiny-image-only)", "broken.ckpt",
                              "unsafe.ckpt"]
    # Images can still be uploaded and are shown without results.
    upload(at, ("a.png", image_bytes(1), MIME["PNG"]))
    assert not at.exception and len(card_buttons(at)) == 1
    assert next(iter(session_uploads(at).values())).prediction is None
    # Choosing a model from the folder loads it and analyses the waiting image.
    at.selectbox(key="model_picker").set_value(str(app_env.image_only)).run()
    assert not at.exception
    assert "Tiny image-only" in texts(at.sidebar.markdown)
    assert next(iter(session_uploads(at).values())).prediction is not None


@pytest.mark.parametrize("which", ["broken", "unsafe"])
def test_bad_checkpoint_shows_error_and_app_goes_on(app_env, which):
    path = getattr(app_env, which)
    at = new_app().run()
    upload(at, ("a.png", image_bytes(2), MIME["PNG"]))
    assert next(iter(session_uploads(at).values())).prediction is not None
    at.selectbox(key="model_picker").set_value(str(path)).run()
    assert not at.exception
    message = texts(at.main.error)
    assert "could not be loaded" in message and path.name in message
    assert str(path.parent) not in message and "Error:" not in message  # no server folder, no class names
    if which == "unsafe":
        assert "refused to load" in message
    assert len(card_buttons(at)) == 1  # the gallery stays
    # Back to a good model: results again.
    at.selectbox(key="model_picker").set_value(str(app_env.fusion)).run()
    assert not at.exception and not at.main.error
    assert next(iter(session_uploads(at).values())).prediction is not None


def test_model_page_shows_card_and_triage_keeps_session(app_env):
    at = new_app().run()
    upload(at, ("kept.png", image_bytes(3), MIME["PNG"]))
    at.toggle(key="cam_on").set_value(True).run()
    at.switch_page("pages/model.py").run()
    assert not at.exception
    assert at.title[0].value == "Model card"
    headers = [h.value for h in at.subheader]
    assert "Intended use" in headers and "Limitations" in headers and "Risk score and traffic light" in headers
    body = texts(at.main.markdown)
    assert "Tiny fusion" in body and "1.5 × P(MEL)" in body and "Not a diagnosis" in body
    at.switch_page("pages/triage.py").run()  # back: the gallery and the Grad-CAM switch are as left
    assert not at.exception
    assert [u.name for u in session_uploads(at).values()] == ["kept.png"] and len(card_buttons(at)) == 1
    assert at.toggle(key="cam_on").value is True
