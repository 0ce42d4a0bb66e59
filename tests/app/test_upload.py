"""Uploads: many formats at once, bad and oversize files, gallery cards, selection, removal, privacy."""

from __future__ import annotations

import csv
import io

import pytest

import backend.data.images as images
from app import report
from backend.data.formats import load_table
from backend.inference.inputs import Preprocessor
from backend.inference.predictor import Predictor
from backend.retrieval.build import build_library
from tests.app.conftest import MIME, card_buttons, image_bytes, new_app, session_uploads, texts, upload


def test_upload_many_formats_bad_file_in_place(app_env):
    at = new_app().run()
    upload(at, ("lesion.png", image_bytes(1, "PNG"), MIME["PNG"]),
           ("broken.jpg", b"\xff\xd8\xff\xe0 truncated jpeg", MIME["JPEG"]),
           ("lesion.jpeg", image_bytes(2, "JPEG"), MIME["JPEG"]),
           ("lesion.bmp", image_bytes(3, "BMP"), MIME["BMP"]),
           ("lesion.tif", image_bytes(4, "TIFF"), MIME["TIFF"]))
    assert not at.exception
    errors = [e.value for e in at.main.error]
    assert len(errors) == 1 and errors[0].startswith("broken.jpg:")
    uploads = session_uploads(at)
    assert sorted(u.name for u in uploads.values()) == ["lesion.bmp", "lesion.jpeg", "lesion.png", "lesion.tif"]
    assert all(u.prediction is not None and u.prediction.image == u.name for u in uploads.values())
    assert len(card_buttons(at)) == 4
    # Each card: top class (no percentage) and a traffic light with words, at the card's top-right.
    heads = [m.value for m in at.markdown if 'class="dl-card-head"' in str(m.value)]
    assert len(heads) == 4
    for upload_, head in zip(uploads.values(), heads, strict=True):
        pred = upload_.prediction
        assert f">{pred.top_class}</span>" in head and "·" not in head  # no percentage: one number, the risk score
        assert f"dl-light-{pred.traffic_light}" in head and "risk" in head
    assert "Gallery (4 images)" in texts(at.subheader)
    # The benign vs malignant bars and the bars of every class of the selected image.
    assert [c.key for c in at.get("plotly_chart")] == ["malignancy_bars", "class_bars"]


def test_identical_file_twice_is_one_card_and_predictions_run_once(app_env, monkeypatch):

    calls = []
    original = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, images, *a, **kw: calls.append(len(images))
                        or original(self, images, *a, **kw))
    at = new_app().run()
    data = image_bytes(5)
    upload(at, ("same.png", data, MIME["PNG"]), ("same.png", data, MIME["PNG"]))
    assert not at.exception and len(session_uploads(at)) == 1 and len(card_buttons(at)) == 1
    assert calls == [1]
    at.run()
    at.run()
    assert calls == [1]  # reruns reuse the session's prediction


def test_each_upload_is_decoded_once_for_display_prediction_and_grad_cam(app_env, monkeypatch):

    decoded, preprocessed = [], []
    decode, preprocess = images._decode, Preprocessor.__call__
    monkeypatch.setattr(images, "_decode", lambda *a, **kw: decoded.append(a[1]) or decode(*a, **kw))
    monkeypatch.setattr(Preprocessor, "__call__", lambda self, image: preprocessed.append(1) or preprocess(self, image))
    at = new_app().run()
    upload(at, ("one.png", image_bytes(15), MIME["PNG"]), ("two.jpg", image_bytes(16, "JPEG"), MIME["JPEG"]))
    at.toggle(key="cam_on").set_value(True).run()
    at.selectbox(key="cam_target").set_value("thickness").run()
    at.button(key=f"select_{list(session_uploads(at))[1]}").click().run()
    assert not at.exception
    assert all(u.prediction is not None and u.cams for u in session_uploads(at).values())
    assert sorted(decoded) == ["one.png", "two.jpg"]  # the uploader's bytes, decoded once each
    assert len(preprocessed) == 2  # the network input of each, made once for the prediction and every Grad-CAM


def test_similar_cases_read_the_upload_decoded_once(app_env, monkeypatch, tmp_path):

    table = load_table(app_env.data_dir / "labels.csv", check_images=False).head(12)
    build_library(table, tmp_path / "refs" / "clinic", Predictor.from_checkpoint(app_env.fusion),
                  model_path=str(app_env.fusion), img_dir=app_env.data_dir / "images", progress=False)
    monkeypatch.setenv("DERMALENS_REFERENCE_DIR", str(tmp_path / "refs"))
    decoded = []
    decode = images._decode
    monkeypatch.setattr(images, "_decode", lambda *a, **kw: decoded.append(a[1]) or decode(*a, **kw))
    at = new_app().run()
    upload(at, ("query.png", image_bytes(17), MIME["PNG"]))
    at.toggle(key="cam_on").set_value(True).run()
    assert not at.exception
    [item] = session_uploads(at).values()
    lesions = table["lesion_id"].nunique()  # one neighbour per library lesion (12 images, two per lesion)
    assert item.prediction is not None and item.cams and len(next(iter(item.similar.values())).neighbours) == lesions
    assert decoded == ["query.png"]


def test_the_library_embedded_with_the_loaded_model_is_picked_first(app_env, monkeypatch, tmp_path):
    table = load_table(app_env.data_dir / "labels.csv", check_images=False).head(6)
    # "a_other" sorts first, but was built with the image-only model, not the loaded fusion model.
    build_library(table, tmp_path / "refs" / "a_other", Predictor.from_checkpoint(app_env.image_only),
                  model_path=str(app_env.image_only), img_dir=app_env.data_dir / "images", progress=False)
    build_library(table, tmp_path / "refs" / "b_mine", Predictor.from_checkpoint(app_env.fusion),
                  model_path=str(app_env.fusion), img_dir=app_env.data_dir / "images", progress=False)
    monkeypatch.setenv("DERMALENS_REFERENCE_DIR", str(tmp_path / "refs"))
    at = new_app().run()
    picker = at.selectbox(key="reference_picker")
    assert picker.value == str(tmp_path / "refs" / "b_mine")
    assert "built with another model" in picker.format_func(str(tmp_path / "refs" / "a_other"))


def test_oversize_file_is_refused_by_name(app_env):
    from streamlit import config

    old = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1)
    try:
        at = new_app().run()
        big = b"\x00" * (1024 * 1024 + 10)
        upload(at, ("huge.png", big, MIME["PNG"]), ("ok.png", image_bytes(6), MIME["PNG"]))
    finally:
        config.set_option("server.maxUploadSize", old)
    assert not at.exception
    assert [e.value for e in at.main.error] == ["huge.png: file is 1.0 MB, over the 1 MB limit"]
    assert [u.name for u in session_uploads(at).values()] == ["ok.png"]


def test_select_card_shows_it_in_viewer(app_env):
    at = new_app().run()
    upload(at, ("first.png", image_bytes(7), MIME["PNG"]), ("second.png", image_bytes(8), MIME["PNG"]))
    assert "Viewer: first.png" in texts(at.subheader)
    first, second = session_uploads(at)
    assert at.button(key=f"select_{first}").label == "Showing first.png"
    assert at.button(key=f"select_{second}").label == "Select second.png"
    assert at.button(key=f"remove_{second}").label == "Remove second.png from the worklist"  # not the chip's x
    at.button(key=f"select_{second}").click().run()
    assert not at.exception
    assert "Viewer: second.png" in texts(at.subheader) and "Viewer: first.png" not in texts(at.subheader)
    assert at.session_state["dl_selected"] == second
    assert at.button(key=f"select_{second}").label == "Showing second.png"
    assert at.button(key=f"select_{first}").label == "Select first.png"
    pred = session_uploads(at)[second].prediction
    assert f"{pred.thickness_mm:.2f} mm" not in texts(at.markdown)  # a band, never two decimals
    shown = (texts(at.markdown) + texts(at.caption)).replace("**", "")
    assert f"Estimated band {pred.thickness_band}" in shown
    assert "Applies only if the lesion is a melanoma" in texts(at.caption)
    assert "**Risk score " in texts(at.markdown)


def test_remove_card_and_clear_session(app_env):
    at = new_app().run()
    upload(at, ("a.png", image_bytes(9), MIME["PNG"]), ("b.png", image_bytes(10), MIME["PNG"]))
    a_id, b_id = session_uploads(at)
    assert at.get("file_uploader")[0].key == "uploader_0"
    at.button(key=f"remove_{a_id}").click().run()
    assert not at.exception and list(session_uploads(at)) == [b_id]
    assert "Viewer: b.png" in texts(at.subheader)
    # One remove action: the uploader is emptied too (a new key), and a.png is not re-ingested.
    assert at.get("file_uploader")[0].key == "uploader_1"
    at.run()
    assert list(session_uploads(at)) == [b_id] and len(card_buttons(at)) == 1
    at.button(key="clear_session").click().run()
    assert not at.exception
    assert session_uploads(at) == {} and not card_buttons(at)
    assert "Upload one or more dermoscopic images" in texts(at.info)
    assert at.get("file_uploader")[0].key == "uploader_2"  # a fresh, empty uploader
    at.run()
    assert session_uploads(at) == {}


def test_two_sessions_are_isolated(app_env):
    alice, bob = new_app().run(), new_app().run()
    upload(alice, ("alice.png", image_bytes(11), MIME["PNG"]))
    bob.run()
    assert not bob.exception
    assert session_uploads(bob) == {} and not card_buttons(bob) and not bob.get("plotly_chart")
    assert "alice.png" not in texts(bob.markdown) + texts(bob.subheader) + texts(bob.caption)
    upload(bob, ("bob.png", image_bytes(12), MIME["PNG"]))
    alice.run()
    assert [u.name for u in session_uploads(alice).values()] == ["alice.png"]
    assert [u.name for u in session_uploads(bob).values()] == ["bob.png"]
    assert "Viewer: alice.png" in texts(alice.subheader) and "Viewer: bob.png" in texts(bob.subheader)


@pytest.mark.parametrize("name", ["notes.png", "empty.png"])
def test_only_bad_files_never_crash(app_env, name):
    at = new_app().run()
    upload(at, (name, b"" if name == "empty.png" else b"plain text", MIME["PNG"]))
    assert not at.exception
    assert texts(at.main.error).startswith(f"{name}:") and session_uploads(at) == {}


def test_prediction_failure_of_one_image_spares_the_others(app_env, monkeypatch):

    original = Predictor.predict
    cursed_calls = []

    def picky(self, images, *args, **kwargs):
        if any(item.name == "cursed.png" for item in images):
            cursed_calls.append(1)
            raise RuntimeError("backend bug")
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", picky)
    at = new_app().run()
    upload(at, ("fine.png", image_bytes(13), MIME["PNG"]), ("cursed.png", image_bytes(14), MIME["PNG"]))
    assert not at.exception
    assert [e.value for e in at.main.error] == ["cursed.png: could not be analysed: unexpected error (backend bug)"]
    fine, cursed = session_uploads(at).values()
    assert fine.prediction is not None
    # The image the model failed on stays in the worklist (its review and IDs are not lost), unanalysed.
    assert cursed.name == "cursed.png" and cursed.prediction is None and "could not be analysed" in cursed.failure
    assert "could not be analysed by this model" in texts(at.main.caption) + texts(at.main.markdown)
    calls = len(cursed_calls)
    at.run()
    assert len(cursed_calls) == calls  # not retried at every rerun with the same model and metadata


def test_an_unreadable_file_stays_listed_when_another_card_is_removed(app_env):
    at = new_app().run()
    upload(at, ("a.png", image_bytes(11), MIME["PNG"]), ("b.png", image_bytes(12), MIME["PNG"]),
           ("broken.jpg", b"\xff\xd8\xff\xe0 truncated jpeg", MIME["JPEG"]))
    a_id, _ = session_uploads(at)
    at.button(key=f"remove_{a_id}").click().run()  # the app empties the uploader: no chip was removed
    assert not at.exception and len(session_uploads(at)) == 1
    assert [e.value for e in at.main.error if str(e.value).startswith("broken.jpg:")], "the unreadable file vanished"
    at.run()
    assert [e.value for e in at.main.error if str(e.value).startswith("broken.jpg:")]
    at.button(key="clear_session").click().run()
    assert not [e for e in at.main.error if str(e.value).startswith("broken.jpg:")]


def test_removing_an_unreadable_file_s_chip_drops_its_message(app_env):
    at = new_app().run()
    good = ("a.png", image_bytes(13), MIME["PNG"])
    upload(at, good, ("broken.jpg", b"\xff\xd8\xff\xe0 truncated jpeg", MIME["JPEG"]))
    assert [e for e in at.main.error if str(e.value).startswith("broken.jpg:")]
    at.get("file_uploader")[0].set_value([good]).run()  # the chip of broken.jpg removed
    assert not at.exception and len(session_uploads(at)) == 1
    assert not [e for e in at.main.error if str(e.value).startswith("broken.jpg:")]


def _in_page_order(node):
    """Every element under ``node``, in the order the page draws them."""
    children = getattr(node, "children", None)
    if not children:
        yield node
        return
    for index in sorted(children):
        yield from _in_page_order(children[index])


def test_the_viewer_leads_with_the_result_before_the_picture(app_env):
    at = new_app().run()
    upload(at, ("first.png", image_bytes(7), MIME["PNG"]))
    order = [(element.type, str(getattr(element, "value", ""))) for element in _in_page_order(at.main)]
    viewer = order.index(("subheader", "Viewer: first.png"))
    headline = next(i for i, (kind, value) in enumerate(order) if kind == "markdown" and value.startswith("### ")
                    and "diagnosis:" in value)
    score = next(i for i, (kind, value) in enumerate(order) if kind == "markdown" and "Risk score " in value)
    picture = next(i for i, (kind, _) in enumerate(order) if kind == "image" and i > viewer)
    bars = order.index(("markdown", "**Benign vs malignant**"))
    decision = next(i for i, (kind, _) in enumerate(order) if kind == "selectbox" and i > viewer)
    assert viewer < headline < score < decision < picture < bars, (viewer, headline, score, decision, picture, bars)
    # The bars run across the viewer, after the picture's column and its neighbour (thickness, quality).
    assert order.index(("markdown", "**Image quality**")) < bars


def test_a_message_about_an_unreadable_file_can_be_dismissed(app_env):
    at = new_app().run()
    upload(at, ("a.png", image_bytes(14), MIME["PNG"]), ("broken.jpg", b"\xff\xd8\xff\xe0 truncated", MIME["JPEG"]))
    dismiss = [b for b in at.button if str(b.key or "").startswith("dismiss_")]
    assert len(dismiss) == 1 and [e for e in at.main.error if str(e.value).startswith("broken.jpg:")]
    dismiss[0].click().run()
    assert not at.exception and not [e for e in at.main.error if str(e.value).startswith("broken.jpg:")]
    assert len(session_uploads(at)) == 1


def test_an_implausible_suggestion_is_not_what_the_viewer_grad_cam_and_csv_lead_with(app_env, monkeypatch):
    original = Predictor.predict

    def predict(self, images, metadata=None, *args, **kwargs):  # the balancing lifted the least probable class
        results = original(self, images, metadata, *args, **kwargs)
        for result in results:
            result.top_class = min(result.probabilities, key=result.probabilities.get)
        return results

    monkeypatch.setattr(Predictor, "predict", predict)
    at = new_app().run()
    upload(at, ("first.png", image_bytes(7), MIME["PNG"]))
    (item,) = session_uploads(at).values()
    probabilities = item.prediction.probabilities
    likeliest, rarest = max(probabilities, key=probabilities.get), item.prediction.top_class
    assert probabilities[rarest] < 0.10 and likeliest != rarest
    assert f"### Most probable diagnosis: {likeliest}" in texts(at.markdown)
    assert f"The class-balanced suggestion, {rarest}" in texts(at.caption)
    at.toggle(key="cam_on").set_value(True).run()  # the default Grad-CAM explains the diagnosis the result leads with
    captions = [img.proto.imgs[0].caption for img in at.main.get("image") if img.proto.imgs[0].caption]
    assert f"Grad-CAM: {likeliest} (" in captions[0], captions
    row = next(csv.DictReader(io.StringIO(report.results_csv([item], "M", "1").decode("utf-8-sig"))))
    assert (row["predicted_class"], row["class_balanced_suggestion"]) == (likeliest, rarest)
