"""Patient metadata per image: used by fusion models (prediction recomputed), noted as unused by image-only ones."""

from __future__ import annotations

import csv
import io

from app import report
from backend.inference.predictor import Predictor
from tests.app.conftest import MIME, image_bytes, new_app, session_uploads, texts, upload


def _meta_widgets(at, uid):
    return (at.number_input(key=f"meta_age_approx_{uid}"), at.selectbox(key=f"meta_sex_{uid}"),
            at.selectbox(key=f"meta_anatom_site_general_{uid}"))


def test_fusion_model_uses_metadata_and_recomputes_once(app_env, monkeypatch):
    from backend.inference.predictor import Predictor

    calls = []
    original = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, images, metadata=None, *a, **kw: calls.append(metadata)
                        or original(self, images, metadata, *a, **kw))
    at = new_app().run()
    upload(at, ("a.png", image_bytes(31), MIME["PNG"]), ("b.png", image_bytes(32), MIME["PNG"]))
    a_id, b_id = session_uploads(at)
    assert calls == [[{}, {}]]
    assert not session_uploads(at)[a_id].prediction.metadata_used
    assert "This fusion model uses age, sex and site" in texts(at.caption)

    age, sex, site = _meta_widgets(at, a_id)
    assert [w.label for w in (age, sex, site)] == ["Age of a.png (years)", "Sex of a.png", "Site of a.png"]
    age.set_value(63)
    sex.set_value("female")
    site.set_value("lower extremity")
    at.run()
    assert not at.exception
    a, b = session_uploads(at)[a_id], session_uploads(at)[b_id]
    assert a.metadata == {"age_approx": 63, "sex": "female", "anatom_site_general": "lower extremity"}
    assert a.prediction.metadata_used and not b.prediction.metadata_used
    assert calls[1:] == [[{"age_approx": 63, "sex": "female", "anatom_site_general": "lower extremity"}]]
    assert "The values below are used for this image" in texts(at.caption)
    at.run()
    assert len(calls) == 2  # unchanged metadata: no new prediction

    # Metadata belongs to its image: selecting the other one shows empty fields; coming back keeps the values.
    at.button(key=f"select_{b_id}").click().run()
    assert [w.value for w in _meta_widgets(at, b_id)] == [None, None, None]
    at.button(key=f"select_{a_id}").click().run()
    assert [w.value for w in _meta_widgets(at, a_id)] == [63, "female", "lower extremity"]
    assert len(calls) == 2


def test_image_only_model_notes_metadata_is_unused(app_env):
    at = new_app().run()
    at.selectbox(key="model_picker").set_value(str(app_env.image_only)).run()
    upload(at, ("a.png", image_bytes(33), MIME["PNG"]))
    uid = next(iter(session_uploads(at)))
    assert "image-only: metadata is kept with the results and exports but not used" in texts(at.info)
    age, _, _ = _meta_widgets(at, uid)
    age.set_value(50).run()
    assert not at.exception
    upload_ = session_uploads(at)[uid]
    assert upload_.metadata["age_approx"] == 50 and not upload_.prediction.metadata_used
    assert "Inputs: image only" in texts(at.sidebar.markdown)


def test_a_reviewed_result_that_changes_with_new_metadata_says_so_until_decided_again(app_env, monkeypatch):
    original = Predictor.predict

    def predict(self, images, metadata=None, *args, **kwargs):  # age 99 fails; any other age swaps the light
        ages = [(meta or {}).get("age_approx") for meta in (metadata or [{}] * len(images))]
        if 99 in ages:
            raise RuntimeError("the model failed")
        results = original(self, images, metadata, *args, **kwargs)
        for result, age in zip(results, ages, strict=True):
            if age is not None:
                result.traffic_light = {"red": "green", "yellow": "green", "green": "red"}[result.traffic_light]
        return results

    monkeypatch.setattr(Predictor, "predict", predict)
    at = new_app().run()
    upload(at, ("a.png", image_bytes(41), MIME["PNG"]), ("b.png", image_bytes(42), MIME["PNG"]))
    a_id, b_id = session_uploads(at)
    before = session_uploads(at)[a_id].prediction.traffic_light
    at.selectbox(key=f"decision_{a_id}").set_value("Excise").run()
    age = _meta_widgets(at, a_id)[0]
    age.set_value(99).run()  # a failed analysis in between hides nothing
    assert session_uploads(at)[a_id].prediction is None and not session_uploads(at)[a_id].changed_since_review
    _meta_widgets(at, a_id)[0].set_value(63).run()
    after = session_uploads(at)[a_id].prediction.traffic_light
    assert not at.exception and after != before
    change = session_uploads(at)[a_id].changed_since_review
    assert change.startswith("The result changed after the patient metadata changed: when the decision was "
                             f"recorded it was {before}")
    assert f"it is now {after}" in change and 'The decision "Excise" was recorded on the earlier result' in change
    assert change in texts(at.main.warning)
    assert "Result changed since the review" in texts(at.caption)
    rows = list(csv.DictReader(io.StringIO(report.results_csv(list(session_uploads(at).values()), "M", "1")
                                           .decode("utf-8-sig"))))
    assert rows[0]["decision"] == "Excise" and rows[0]["decision_on_earlier_result"].startswith(before)
    assert rows[1]["decision_on_earlier_result"] == ""
    _meta_widgets(at, a_id)[0].set_value(None).run()  # put back: the result is the reviewed one again
    assert session_uploads(at)[a_id].prediction.traffic_light == before
    assert session_uploads(at)[a_id].changed_since_review == "" and "Result changed since" not in texts(at.caption)
    _meta_widgets(at, a_id)[0].set_value(63).run()
    assert session_uploads(at)[a_id].changed_since_review
    at.button(key=f"select_{b_id}").click().run()
    _meta_widgets(at, b_id)[0].set_value(40).run()  # not reviewed: nothing to warn about
    assert session_uploads(at)[b_id].changed_since_review == ""
    at.button(key=f"select_{a_id}").click().run()
    at.selectbox(key=f"decision_{a_id}").set_value("Biopsy").run()  # decided again, on the new result
    assert session_uploads(at)[a_id].changed_since_review == "" and "Result changed since" not in texts(at.caption)
    assert session_uploads(at)[a_id].reviewed_on[0][0] == after
    _meta_widgets(at, a_id)[0].set_value(None).run()  # changed again; the same decision can be kept in one click
    assert session_uploads(at)[a_id].changed_since_review
    assert "The result changed: see the top of the viewer." in texts(at.main.warning)  # beside the metadata too
    at.button(key=f"reconfirm_{a_id}").click().run()
    assert not at.exception and session_uploads(at)[a_id].changed_since_review == ""
    assert session_uploads(at)[a_id].decision == "Biopsy" and session_uploads(at)[a_id].reviewed_on[0][0] == before
