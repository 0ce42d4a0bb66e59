"""The Follow-up screen (AppTest): a pair from uploads or the worklist, aligned views, measures in words."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.proto.Metric_pb2 import Metric

from backend.followup import change
from backend.followup.render import change_map_image, comparison_image
from backend.followup.synthetic import FollowUpParams, make_follow_up
from tests.app.conftest import image_bytes, new_app, session_uploads, texts, upload
from tests.conftest import REPO_ROOT, download_file
from tests.followup.conftest import encoded, lesion_photo


@pytest.fixture(scope="module")
def visits() -> tuple[bytes, bytes]:
    """A baseline and a follow-up (rotated, zoomed, lesion 30% wider) as PNG bytes."""
    before, truth = lesion_photo(30, size=160)
    after = make_follow_up(before, FollowUpParams(angle_deg=12, zoom=1.1, growth=1.3), truth, seed=30).image
    return encoded(before), encoded(after)


def put(at, index: int, name: str, data: bytes):
    """Upload one file through the page's ``index``-th uploader and rerun."""
    uploader = at.get("file_uploader")[index]
    uploader.upload(name, data, "image/png")
    return uploader.run()


def captions(at) -> list[str]:
    """Captions of the main area's images."""
    return [img.proto.imgs[0].caption for img in at.main.get("image")]


def open_followup():
    at = new_app().run()
    at.switch_page("pages/followup.py").run()
    assert not at.exception
    assert "Follow-up" in [t.value for t in at.title]
    return at


def test_uploaded_pair_shows_aligned_views_and_measures(app_env, visits, monkeypatch):
    calls = []
    original = change.compare_visits
    monkeypatch.setattr(change, "compare_visits", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    monkeypatch.setattr("backend.followup.compare_visits", change.compare_visits)
    at = open_followup()
    assert len(at.get("file_uploader")) == 2
    put(at, 0, "visit1.png", visits[0])
    put(at, 1, "visit2.png", visits[1])
    assert not at.exception and not at.error
    words = texts(at.markdown)
    assert "larger in area than at the first visit" in words
    assert "supports, not replaces, clinical judgement" in words
    assert "The model's risk score went from" in words  # the sidebar's (tiny default) model was used
    assert "Aligned photos" in texts(at.subheader) and "Change map" in texts(at.subheader)
    headers = [h.value for h in at.subheader]
    assert headers.index("Measured change") < headers.index("Aligned photos")  # the change leads
    review = texts(at.warning)  # growth is set apart from the neutral measures, with the thresholds
    assert "**Changes to review** (area or largest diameter changed by 10% or more" in review
    assert "- Lesion grew by" in review
    shown = captions(at)
    assert len(shown) == 3 and shown[1] == "Blend: 50% follow-up"  # side by side, blend, change map
    labels = [m.label for m in at.metric]
    grey = Metric.DESCRIPTOR.fields_by_name["color"].enum_type.values_by_name["GRAY"].number
    assert all(m.proto.color == grey for m in at.metric if m.proto.delta)  # no good-news green on a risk change
    assert "Area change" in labels and at.metric[0].value.startswith("+")
    at.radio(key="fu_mode").set_value("Swipe").run()
    at.slider(key="fu_amount").set_value(80).run()
    assert not at.exception and captions(at)[1] == "Swipe at 80%"
    assert calls == [1]  # the slider and the mode re-mix cached pictures, never recompute
    store = at.session_state["dl_followup"]
    assert len(store["results"]) == 1


def test_unrelated_pair_says_so_and_shows_no_overlay(app_env):
    at = open_followup()
    put(at, 0, "one.png", encoded(lesion_photo(31, size=160)[0]))
    put(at, 1, "other.png", encoded(lesion_photo(32, size=160)[0]))
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "could not be aligned" in errors[0] and "no overlay" in errors[0]
    assert "Aligned photos" not in texts(at.subheader) and not at.metric
    assert captions(at) == ["Baseline: one.png", "Follow-up (not aligned): other.png"]  # apart, never overlaid


def test_pair_from_the_triage_worklist(app_env, visits):
    at = new_app().run()
    upload(at, ("first.png", visits[0], "image/png"), ("second.png", visits[1], "image/png"))
    assert len(at.session_state["dl_uploads"]) == 2
    at.switch_page("pages/followup.py").run()
    at.radio(key="fu_source").set_value("From the triage worklist").run()
    assert not at.exception
    assert at.selectbox(key="fu_pick_before").value != at.selectbox(key="fu_pick_after").value
    assert "larger in area than at the first visit" in texts(at.markdown)
    assert not np.isnan(float(at.metric[0].value.strip("+%")))


def test_worklist_pair_is_scored_with_the_metadata_typed_on_triage(app_env, visits, monkeypatch):
    seen = []
    original = change.compare_visits
    monkeypatch.setattr(change, "compare_visits", lambda *a, **kw: seen.append(kw) or original(*a, **kw))
    monkeypatch.setattr("backend.followup.compare_visits", change.compare_visits)
    at = new_app().run()
    upload(at, ("first.png", visits[0], "image/png"), ("second.png", visits[1], "image/png"))
    first, second = session_uploads(at)
    at.number_input(key=f"meta_age_approx_{first}").set_value(70)
    at.selectbox(key=f"meta_sex_{first}").set_value("female")
    at.run()  # Triage predicts the first image again, with its metadata
    uploads = session_uploads(at)
    assert uploads[first].prediction.metadata_used and not uploads[second].prediction.metadata_used
    at.switch_page("pages/followup.py").run()
    at.radio(key="fu_source").set_value("From the triage worklist").run()
    assert not at.exception
    assert seen, [e.value for e in at.error] + [w.value for w in at.warning] + [i.value for i in at.info]
    assert seen[-1]["model_metadata"] == ({"age_approx": 70, "sex": "female"}, None)
    result = next(iter(at.session_state["dl_followup"]["results"].values()))
    before, after = uploads[first].prediction, uploads[second].prediction
    # The same image reads the same risk on both screens.
    assert (result.risk_before, result.risk_after) == (pytest.approx(before.risk), pytest.approx(after.risk))


def _files_changed_since(t0: float) -> list[Path]:
    """Files under the temp folder and the repository (build and run folders aside) written since ``t0``."""
    skip = {".venv", ".git", "runs", "node_modules", "__pycache__"}
    changed = []
    for root in {Path(tempfile.gettempdir()), REPO_ROOT}:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    stat = path.lstat()
                except OSError:
                    continue
                if max(stat.st_mtime, stat.st_ctime) >= t0 and path.is_file() and stat.st_size < 64 * 1024 * 1024:
                    changed.append(path)
    return changed


def test_a_compared_pair_leaves_nothing_on_disk(app_env, visits):
    probe = f"followup_probe_{uuid.uuid4().hex}"
    signatures = [data[len(data) // 2 : len(data) // 2 + 64] for data in visits]  # bytes only these files have
    at = open_followup()
    time.sleep(0.05)
    t0 = time.time() - 0.01
    put(at, 0, f"{probe}_1.png", visits[0])
    put(at, 1, f"{probe}_2.png", visits[1])
    at.radio(key="fu_mode").set_value("Swipe").run()
    assert not at.exception and "Aligned photos" in texts(at.subheader)
    leaks = []
    for path in _files_changed_since(t0):
        try:
            content = path.read_bytes()
        except OSError:
            continue
        if probe in str(path) or probe.encode() in content or any(s in content for s in signatures):
            leaks.append(path)
    assert leaks == []
    at.button(key="fu_clear").click().run()  # and the screen's own button forgets the pair
    assert at.session_state["dl_followup"]["results"] == {} and at.session_state["dl_followup"]["pair"] == {}


def worklist_of_three(visits):
    """Follow-up from the worklist of two visits of one lesion and an unrelated image: (app, first, second)."""
    at = new_app().run()
    upload(at, ("first.png", visits[0], "image/png"), ("other.png", image_bytes(5), "image/png"),
           ("second.png", visits[1], "image/png"))
    first, _, second = session_uploads(at)
    at.switch_page("pages/followup.py").run()
    at.radio(key="fu_source").set_value("From the triage worklist").run()
    return at, first, second


def test_worklist_pairs_two_images_of_one_lesion_id_by_default_and_never_two_unrelated_ones(app_env, visits):
    at, first, second = worklist_of_three(visits)
    assert not at.exception and at.selectbox(key="fu_pick_before").value is None  # three images, no lesion IDs
    assert "no two images of the worklist share a lesion ID" in texts(at.info) and not at.metric
    uploads = session_uploads(at)
    uploads[first].lesion_id = uploads[second].lesion_id = "L7"
    at = at.switch_page("pages/triage.py").run().switch_page("pages/followup.py").run()
    at.radio(key="fu_source").set_value("From the triage worklist").run()
    assert (at.selectbox(key="fu_pick_before").value, at.selectbox(key="fu_pick_after").value) == (first, second)
    assert "larger in area than at the first visit" in texts(at.markdown)


def test_an_uploaded_pair_is_kept_across_a_change_of_source_and_page_until_its_chip_goes(app_env, visits):
    at = open_followup()
    put(at, 0, "visit1.png", visits[0])
    put(at, 1, "visit2.png", visits[1])
    assert "larger in area than at the first visit" in texts(at.markdown)
    at.radio(key="fu_source").set_value("From the triage worklist").run()
    at.radio(key="fu_source").set_value("Upload a pair").run()  # the uploaders come back empty
    assert not at.exception and "larger in area than at the first visit" in texts(at.markdown)
    assert "Kept from before: visit1.png" in texts(at.caption) and "Kept from before: visit2.png" in texts(at.caption)
    at = at.switch_page("pages/triage.py").run().switch_page("pages/followup.py").run()
    assert "larger in area than at the first visit" in texts(at.markdown)
    put(at, 1, "visit2b.png", visits[1])  # a new follow-up photo replaces the kept one
    assert "Kept from before: visit2.png" not in texts(at.caption)
    at.get("file_uploader")[1].set_value(None).run()  # its chip removed: the follow-up photo is gone
    assert not at.exception and "larger in area" not in texts(at.markdown)
    assert "Choose a baseline and a follow-up photo" in texts(at.info)


def test_the_comparison_exports_its_measures_and_pictures_without_metadata(app_env, visits, media):
    at = open_followup()
    put(at, 0, "visit1.png", visits[0])
    put(at, 1, "visit2.png", visits[1])
    result = next(iter(at.session_state["dl_followup"]["results"].values()))
    measures = download_file(at, media, "fu_export_json")
    assert measures.filename == "followup_visit1_visit2.json"
    data = json.loads(measures.content)
    assert data == json.loads(json.dumps(result.to_dict()))  # what scripts/compare_visits.py writes
    assert data["area_change"] > 0.2 and any(flag.startswith("lesion grew by") for flag in data["flags"])
    picture = download_file(at, media, "fu_export_png")
    image = Image.open(io.BytesIO(picture.content))
    assert picture.filename == "followup_visit1_visit2.png" and image.format == "PNG"
    assert not image.getexif() and "exif" not in image.info
    assert image.size[0] == max(comparison_image(result).shape[1], change_map_image(result).shape[1])
    assert image.size[1] == comparison_image(result).shape[0] + change_map_image(result).shape[0]



def test_the_chosen_source_and_worklist_pair_come_back_after_another_page(app_env, visits):
    at, first, second = worklist_of_three(visits)
    at.selectbox(key="fu_pick_before").set_value(first).run()
    at.selectbox(key="fu_pick_after").set_value(second).run()
    assert "larger in area than at the first visit" in texts(at.markdown)
    at = at.switch_page("pages/triage.py").run().switch_page("pages/followup.py").run()
    assert not at.exception and at.radio(key="fu_source").value == "From the triage worklist"
    assert (at.selectbox(key="fu_pick_before").value, at.selectbox(key="fu_pick_after").value) == (first, second)
    assert "larger in area than at the first visit" in texts(at.markdown)
