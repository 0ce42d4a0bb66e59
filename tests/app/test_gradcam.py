"""Grad-CAM: sidebar toggle, display modes, opacity and target; heatmaps computed once per image and target."""

from __future__ import annotations

import pytest

from backend.inference.explain import CAM_TRANSPARENT_BELOW
from tests.app.conftest import MIME, image_bytes, new_app, session_uploads, upload


@pytest.fixture
def explain_calls(monkeypatch) -> list:
    from backend.inference.predictor import Predictor

    calls: list = []
    original = Predictor.explain

    def counting(self, image, target=None, metadata=None):
        calls.append(target)
        return original(self, image, target, metadata)

    monkeypatch.setattr(Predictor, "explain", counting)
    return calls


def _images(at) -> list[tuple[str, str]]:
    """(caption, url) of the viewer's images (gallery thumbnails have no caption)."""
    return [(img.proto.imgs[0].caption, img.value[0]) for img in at.main.get("image") if img.proto.imgs[0].caption]


def _captions(at) -> list[str]:
    return [caption for caption, _ in _images(at)]


def test_toggle_mode_opacity_target_use_cached_heatmaps(app_env, explain_calls):
    at = new_app().run()
    upload(at, ("lesion.png", image_bytes(21, size=96), MIME["PNG"]), ("other.png", image_bytes(22), MIME["PNG"]))
    first = next(iter(session_uploads(at).values()))
    top = first.prediction.top_class
    assert _captions(at) == ["lesion.png"] and explain_calls == []  # off by default: the plain image

    at.toggle(key="cam_on").set_value(True).run()
    assert not at.exception
    assert at.selectbox(key="cam_target").value == "__predicted__"  # default target: the predicted class
    assert explain_calls == [top]
    assert _captions(at)[0].startswith("Grad-CAM: ") and top in _captions(at)[0]
    assert set(session_uploads(at)[first.id].cams) == {top}
    heat = session_uploads(at)[first.id].cams[top]
    assert heat.ndim == 2 and 0.0 <= float(heat.min()) <= float(heat.max()) <= 1.0
    overlay_url = _images(at)[0][1]
    captions = [c.value for c in at.main.caption]
    assert any(c.startswith("Attention: low → high") for c in captions)  # the colour legend
    assert any("did not see the greyed border" in c for c in captions) == (first.image.shape[0]
                                                                           != first.image.shape[1])

    at.slider(key="cam_opacity").set_value(0.9).run()
    assert not at.exception and explain_calls == [top]  # slider: re-blend only
    # Heat below the transparency threshold paints nothing, so opacity only shows where heat is high
    # (a tiny model's map may be empty, which the viewer says in words).
    assert (_images(at)[0][1] != overlay_url) == bool(heat.max() > CAM_TRANSPARENT_BELOW)
    if heat.max() <= 0.0:
        assert any("the heatmap is empty" in c.value for c in at.main.caption)

    at.radio(key="cam_mode").set_value("Side by side").run()
    assert len(_images(at)) == 2
    assert _captions(at)[0] == "Image" and _captions(at)[1].startswith("Grad-CAM: ")
    at.radio(key="cam_mode").set_value("Heatmap only").run()
    assert len(_images(at)) == 1 and _captions(at)[0].startswith("Grad-CAM")
    assert explain_calls == [top]

    at.selectbox(key="cam_target").set_value("thickness").run()
    assert not at.exception and explain_calls == [top, "thickness"]
    assert _captions(at)[0] == "Grad-CAM: Breslow thickness output"
    at.selectbox(key="cam_target").set_value(top).run()  # the same class picked by name: cached
    at.selectbox(key="cam_target").set_value("__predicted__").run()
    assert explain_calls == [top, "thickness"]
    assert set(session_uploads(at)[first.id].cams) == {top, "thickness"}

    at.toggle(key="cam_on").set_value(False).run()
    assert _captions(at) == ["lesion.png"]


def test_cams_are_per_image(app_env, explain_calls):
    at = new_app().run()
    upload(at, ("one.png", image_bytes(23), MIME["PNG"]), ("two.png", image_bytes(24), MIME["PNG"]))
    one, two = session_uploads(at)
    at.toggle(key="cam_on").set_value(True).run()
    at.button(key=f"select_{two}").click().run()
    at.button(key=f"select_{one}").click().run()
    assert not at.exception
    assert len(explain_calls) == 2  # one per image, none again when coming back
    assert all(len(u.cams) == 1 for u in session_uploads(at).values())


def test_grad_cam_failure_is_shown_in_place(app_env, monkeypatch):
    from backend.errors import ConfigError
    from backend.inference.predictor import Predictor

    def failing(self, image, target=None, metadata=None):
        raise ConfigError(f"cannot explain {target}")

    monkeypatch.setattr(Predictor, "explain", failing)
    at = new_app().run()
    upload(at, ("a.png", image_bytes(25), MIME["PNG"]))
    at.toggle(key="cam_on").set_value(True).run()
    assert not at.exception
    assert "Grad-CAM of a.png" in at.main.error[0].value and "cannot explain" in at.main.error[0].value
    assert _captions(at) == ["a.png"] and len(at.get("plotly_chart")) == 2  # the rest of the viewer stays
