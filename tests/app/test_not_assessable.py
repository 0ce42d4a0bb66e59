"""A flagged upload is not assessable: grey card, the viewer says so first, the result only on request."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from backend.inference.predictor import Predictor
from backend.inference.quality import FLAG_CODES
from tests.app.conftest import MIME, image_bytes, new_app, session_uploads, texts, upload


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_flagged_upload_is_grey_and_its_result_shows_only_on_request(app_env):
    at = new_app().run()
    upload(at, ("black.png", png(np.zeros((96, 96, 3), np.uint8)), MIME["PNG"]))
    assert not at.exception
    (item,) = session_uploads(at).values()
    pred = item.prediction
    assert pred.flags and pred.traffic_light == "grey" and pred.model_light in ("green", "yellow", "red")

    heads = [str(m.value) for m in at.markdown if 'class="dl-card-head"' in str(m.value)]
    assert len(heads) == 1 and "dl-light-grey" in heads[0] and "Not assessable: retake" in heads[0]
    assert "risk" not in heads[0].lower().replace("not assessable", "")
    captions = texts(at.caption)
    # The card names its reasons briefly (the viewer gives them in full): a grey card stays card-sized.
    assert f"black.png  \nNot assessable: {FLAG_CODES[pred.flags[0]]}" in captions
    assert "The image is blank" not in captions

    # The viewer's first message says so, before any prediction; the prediction is hidden.
    # The viewer's first message (after its title and previous / next), with the grey light, not an amber box.
    viewer = [str(m.value) for m in at.main.markdown]
    title = next(i for i, t in enumerate(viewer) if t.startswith("**Not assessable: retake the image.**"))
    assert "too dark or blank" in viewer[title] and "dl-light-grey" in viewer[title - 1]
    assert "Laplacian" not in "\n".join(viewer) and not at.main.warning
    key = f"show_anyway_{item.id}"
    assert at.toggle(key=key).label == "Show the model's result anyway (black.png)" and not at.toggle(key=key).value
    assert pred.top_class not in texts(at.markdown).replace("dl-card-head", "")
    assert len(at.get("plotly_chart")) == 0

    at.toggle(key=key).set_value(True).run()
    assert not at.exception
    assert f"### Suggested diagnosis: {pred.top_class} (" in texts(at.markdown)
    headline = next(str(m.value) for m in at.main.markdown if str(m.value).startswith("### "))
    assert headline.endswith(" (image not assessable)")  # never drawn as a trusted result
    assert len(at.get("plotly_chart")) == 2
    # The model's own light, on request, in words only: never a risk colour on an image it cannot read.
    assert f"dl-light-{pred.model_light}" not in texts(at.markdown)
    assert f"in words only: {pred.model_light.capitalize()}: risk score" in texts(at.caption)
    assert "of red lesions were malignant" not in texts(at.caption)  # no test-split figures for this light
    assert any(str(m.value).startswith("**Not assessable") for m in at.main.markdown)  # still said


def test_show_anyway_is_kept_with_the_image_while_another_is_viewed(app_env):
    at = new_app().run()
    upload(at, ("black.png", png(np.zeros((96, 96, 3), np.uint8)), MIME["PNG"]),
           ("lesion.png", image_bytes(7, size=96), MIME["PNG"]))
    grey, normal = session_uploads(at)
    if at.session_state["dl_selected"] != grey:
        at.button(key=f"select_{grey}").click().run()
    at.toggle(key=f"show_anyway_{grey}").set_value(True).run()
    assert session_uploads(at)[grey].show_anyway
    at.button(key=f"select_{normal}").click().run()  # the toggle is not drawn: Streamlit forgets its state
    at.run()
    assert not at.exception and session_uploads(at)[grey].show_anyway
    at.button(key=f"select_{grey}").click().run()
    assert at.toggle(key=f"show_anyway_{grey}").value  # drawn again, still on
    assert f"### Suggested diagnosis: {session_uploads(at)[grey].prediction.top_class} (" in texts(at.markdown)
    # Another model's result of the image is hidden again until asked for: the choice was for the earlier one.
    at.selectbox(key="model_picker").set_value(str(app_env.image_only)).run()
    assert not at.exception and not session_uploads(at)[grey].show_anyway
    assert not at.toggle(key=f"show_anyway_{grey}").value


def test_show_anyway_does_not_survive_a_failed_analysis(app_env, monkeypatch):
    at = new_app().run()
    upload(at, ("black.png", png(np.zeros((96, 96, 3), np.uint8)), MIME["PNG"]))
    (grey,) = session_uploads(at)
    at.toggle(key=f"show_anyway_{grey}").set_value(True).run()
    assert session_uploads(at)[grey].show_anyway
    original = Predictor.predict

    def broken(self, images, *args, **kwargs):
        raise RuntimeError("backend bug")

    monkeypatch.setattr(Predictor, "predict", broken)
    at.selectbox(key="model_picker").set_value(str(app_env.image_only)).run()
    assert session_uploads(at)[grey].prediction is None and session_uploads(at)[grey].failure
    monkeypatch.setattr(Predictor, "predict", original)
    at.selectbox(key="model_picker").set_value(str(app_env.fusion)).run()
    item = session_uploads(at)[grey]
    # A new result after the failure stays hidden until asked for again.
    assert not at.exception and item.prediction is not None and item.prediction.traffic_light == "grey"
    assert not item.show_anyway and not at.toggle(key=f"show_anyway_{grey}").value
    assert "diagnosis: " not in texts(at.markdown)  # no headline under any title while the result is hidden


def test_normal_upload_keeps_its_colour_and_no_toggle(app_env):
    at = new_app().run()
    upload(at, ("lesion.png", image_bytes(7, size=96), MIME["PNG"]))
    (item,) = session_uploads(at).values()
    assert item.prediction.flags == [] and item.prediction.traffic_light in ("green", "yellow", "red")
    assert not [t for t in at.toggle if str(t.key or "").startswith("show_anyway_")]
    assert "Not assessable" not in texts(at.main.markdown).replace("dl-light", "")
