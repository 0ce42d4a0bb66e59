"""Master-detail triage: named card buttons, previous / next, one remove action, sort and filter, review."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from app import worklist
from app.page_scripts import unload_guard_js
from tests.app.conftest import MIME, card_buttons, image_bytes, new_app, session_uploads, texts, upload
from tests.conftest import download_file


def three(at):
    """Upload c.png, a.png, b.png (in that order) and return their ids in upload order."""
    upload(at, ("c.png", image_bytes(21), MIME["PNG"]), ("a.png", image_bytes(22), MIME["PNG"]),
           ("b.png", image_bytes(23), MIME["PNG"]))
    return list(session_uploads(at))


def black_png() -> bytes:
    """A 64-px black PNG: the quality gate calls it too dark, so its card is grey."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def card_names(at) -> list[str]:
    """Names of the gallery's images, in card order (from the "Select x" / "Showing x" labels)."""
    return [b.label.split(" ", 1)[1] for b in card_buttons(at)]


def test_named_select_shows_image_and_previous_next_follow_gallery_order(app_env):
    at = new_app().run()
    c, a, b = three(at)
    assert at.button(key=f"select_{a}").label == "Select a.png" and at.button(key=f"remove_{a}").label == (
        "Remove a.png from the worklist")
    at.button(key=f"select_{a}").click().run()
    assert not at.exception and "Viewer: a.png" in texts(at.subheader) and at.session_state["dl_selected"] == a
    assert at.button(key="viewer_prev").label == "Previous image" and at.button(key="viewer_next").label == "Next image"
    at.button(key="viewer_next").click().run()
    assert at.session_state["dl_selected"] == b and "Viewer: b.png" in texts(at.subheader)
    assert at.button(key="viewer_next").disabled  # the last image
    at.button(key="viewer_prev").click().run()
    at.button(key="viewer_prev").click().run()
    assert at.session_state["dl_selected"] == c and at.button(key="viewer_prev").disabled
    # Sorted by name, next follows the shown order: a -> b -> c.
    at.selectbox(key="gallery_sort").set_value("Name").run()
    assert card_names(at) == ["a.png", "b.png", "c.png"]
    at.button(key=f"select_{a}").click().run()
    at.button(key="viewer_next").click().run()
    assert at.session_state["dl_selected"] == b


def test_remove_drops_image_from_gallery_and_uploader(app_env):
    at = new_app().run()
    c, a, b = three(at)
    at.button(key=f"select_{a}").click().run()
    key = at.get("file_uploader")[0].key
    at.button(key=f"remove_{a}").click().run()
    assert not at.exception and list(session_uploads(at)) == [c, b]
    assert at.get("file_uploader")[0].key != key  # a new, empty uploader: no stale chip of a.png
    assert at.session_state["dl_selected"] == b  # the next image takes the removed one's place
    at.run()
    assert card_names(at) == ["c.png", "b.png"]


def test_removing_an_image_with_a_review_asks_first(app_env):
    at = new_app().run()
    c, a, b = three(at)
    session_uploads(at)[a].note = "recheck in 3 months"
    at.button(key=f"remove_{a}").click().run()
    assert not at.exception and list(session_uploads(at)) == [c, a, b]  # nothing lost yet
    assert "a.png has a review decision, note or ID" in texts(at.main.warning)
    # Asked in a.png's own card (its Remove button gives way to the question), "Keep it" first.
    keys = [w.key for w in at.button]
    assert f"remove_{a}" not in keys and f"remove_{b}" in keys
    assert keys.index("remove_cancel") < keys.index("remove_confirm")
    at.button(key="remove_cancel").click().run()
    assert list(session_uploads(at)) == [c, a, b] and "review decision" not in texts(at.main.warning)
    at.button(key=f"remove_{a}").click().run()
    at.button(key="remove_confirm").click().run()
    assert not at.exception and list(session_uploads(at)) == [c, b]
    assert "review decision" not in texts(at.main.warning)


def test_removing_a_reviewed_image_s_chip_in_the_uploader_asks_first(app_env):
    at = new_app().run()
    c, a, b = three(at)
    session_uploads(at)[a].decision = "Biopsy"
    uploader = at.get("file_uploader")[0]
    uploader.set_value([("c.png", image_bytes(21), MIME["PNG"]), ("b.png", image_bytes(23), MIME["PNG"])]).run()
    assert not at.exception and list(session_uploads(at)) == [c, a, b]  # kept, with its decision
    assert "a.png has a review decision, note or ID" in texts(at.main.warning)
    at.button(key="remove_confirm").click().run()
    assert list(session_uploads(at)) == [c, b]


def test_removing_a_file_in_the_uploader_drops_its_card_and_keeps_the_rest(app_env):
    at = new_app().run()
    c, a, b = three(at)
    kept = {uid: session_uploads(at)[uid].prediction for uid in (c, b)}
    at.button(key=f"select_{a}").click().run()
    uploader = at.get("file_uploader")[0]
    # The chip of a.png removed: the uploader now holds c.png and b.png only.
    uploader.set_value([("c.png", image_bytes(21), MIME["PNG"]), ("b.png", image_bytes(23), MIME["PNG"])]).run()
    assert not at.exception and list(session_uploads(at)) == [c, b] and card_names(at) == ["c.png", "b.png"]
    assert all(session_uploads(at)[uid].prediction is kept[uid] for uid in (c, b))  # nothing recomputed
    assert at.session_state["dl_selected"] == b
    at.get("file_uploader")[0].set_value(None).run()  # every chip removed: an empty gallery
    assert session_uploads(at) == {} and not card_buttons(at)


def test_sort_and_filter_change_the_gallery(app_env):
    at = new_app().run()
    upload(at, ("c.png", image_bytes(21), MIME["PNG"]), ("a.png", image_bytes(22), MIME["PNG"]),
           ("b.png", image_bytes(23), MIME["PNG"]), ("black.png", black_png(), MIME["PNG"]))  # black: grey
    ids = list(session_uploads(at))
    preds = {u.name: u.prediction for u in session_uploads(at).values()}
    shown = ["c.png", "a.png", "b.png", "black.png"]
    assert card_names(at) == shown
    at.selectbox(key="gallery_sort").set_value("Risk (highest first)").run()
    # Red by risk, then the grey cards (risk not shown: to retake), then yellow and green by risk; ties in
    # upload order. The sample has a grey card and an assessed one below red, which grey-last would swap.
    lights = {n: preds[n].traffic_light for n in shown}
    by_risk = lambda names: sorted(names, key=lambda n: (-preds[n].risk, shown.index(n)))  # noqa: E731
    red = by_risk([n for n in shown if lights[n] == "red"])
    grey = [n for n in shown if lights[n] == "grey"]
    rest = by_risk([n for n in shown if lights[n] in ("yellow", "green")])
    assert grey == ["black.png"] and rest
    assert card_names(at) == red + grey + rest
    summary = worklist.summary([(None, p) for p in preds.values()])
    assert summary in texts(at.caption) and summary.startswith("4 images: ")
    light = preds["a.png"].traffic_light
    at.multiselect(key="gallery_lights").set_value([light]).run()
    assert not at.exception
    assert sorted(card_names(at)) == sorted(n for n, p in preds.items() if p.traffic_light == light)
    at.multiselect(key="gallery_lights").set_value([]).run()
    at.checkbox(key="gallery_flagged").check().run()
    assert sorted(card_names(at)) == sorted(n for n, p in preds.items() if p.flags)
    assert len(ids) == 4


def test_decision_and_note_persist_show_on_card_and_export(app_env, media):
    at = new_app().run()
    _, a, b = three(at)
    at.button(key=f"select_{a}").click().run()
    at.selectbox(key=f"decision_{a}").set_value("Excise").run()
    at.text_input(key=f"note_{a}").input("irregular border").run()
    assert not at.exception
    item = session_uploads(at)[a]
    assert (item.decision, item.note) == ("Excise", "irregular border")
    assert "Reviewed: Excise" in texts(at.caption)
    at.button(key="viewer_next").click().run()
    at.button(key="viewer_prev").click().run()  # back on a.png: the widgets show what was stored
    assert at.selectbox(key=f"decision_{a}").value == "Excise"
    assert at.text_input(key=f"note_{a}").value == "irregular border"
    assert at.text_input(key=f"lid_{a}").label == "Lesion ID of a.png"
    at.text_input(key=f"lid_{a}").input("back 3").run()
    at.text_input(key=f"pid_{a}").input("P-1").run()
    assert (session_uploads(at)[a].lesion_id, session_uploads(at)[a].patient_id) == ("back 3", "P-1")
    at.multiselect(key="patient_images").set_value([a, b]).run()
    at.text_input(key="patient_id_value").input("P-17").run()
    at.button(key="patient_apply").click().run()
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(
        download_file(at, media, "export_csv").content.decode("utf-8-sig")))}
    assert (rows["a.png"]["decision"], rows["a.png"]["note"], rows["a.png"]["patient_id"]) == (
        "Excise", "irregular border", "P-17")  # the group's ID replaced the one typed for the image
    assert at.text_input(key=f"pid_{a}").value == "P-17" and rows["a.png"]["lesion_id"] == "back 3"
    assert (rows["b.png"]["decision"], rows["b.png"]["patient_id"]) == ("", "P-17")
    assert rows["c.png"]["patient_id"] == ""
    # A decision or note taken back (the widget cleared) is gone from the card and the export too.
    at.selectbox(key=f"decision_{a}").set_value(None).run()
    at.text_input(key=f"note_{a}").set_value(None).run()
    assert not at.exception and (session_uploads(at)[a].decision, session_uploads(at)[a].note) == ("", "")
    assert "Reviewed: Excise" not in texts(at.caption)
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(
        download_file(at, media, "export_csv").content.decode("utf-8-sig")))}
    assert (rows["a.png"]["decision"], rows["a.png"]["note"]) == ("", "")


def test_patient_id_and_metadata_entered_once_for_a_group(app_env, media):
    at = new_app().run()
    c, a, b = three(at)
    before = {uid: u.prediction for uid, u in session_uploads(at).items()}
    at.button(key=f"select_{a}").click().run()
    assert at.number_input(key=f"meta_age_approx_{a}").value is None
    at.multiselect(key="patient_images").set_value([a, b]).run()
    at.text_input(key="patient_id_value").input("P-17").run()
    at.number_input(key="group_age").set_value(63).run()
    at.selectbox(key="group_sex").set_value("male").run()
    at.selectbox(key="group_site").set_value("posterior torso").run()
    at.button(key="patient_apply").click().run()
    assert not at.exception and "Applied to 2 images." in texts(at.caption)
    assert at.multiselect(key="patient_images").value == []
    items = session_uploads(at)
    for uid in (a, b):
        assert items[uid].patient_id == "P-17"
        assert items[uid].metadata == {"age_approx": 63, "sex": "male", "anatom_site_general": "posterior torso"}
        # The fusion model re-predicted with the group's metadata.
        assert items[uid].prediction is not before[uid] and items[uid].prediction.metadata_used
    assert items[c].patient_id == "" and not items[c].metadata_given() and items[c].prediction is before[c]
    # The viewer's own fields show the group's values and stay editable per image.
    assert at.number_input(key=f"meta_age_approx_{a}").value == 63
    assert at.selectbox(key=f"meta_sex_{a}").value == "male"
    # A second group entry with only the sex keeps the age, site and patient ID already given.
    at.multiselect(key="patient_images").set_value([b]).run()
    at.text_input(key="patient_id_value").input("").run()
    at.number_input(key="group_age").set_value(None).run()
    at.selectbox(key="group_site").set_value(None).run()
    at.selectbox(key="group_sex").set_value("female").run()
    at.button(key="patient_apply").click().run()
    items = session_uploads(at)
    assert items[b].metadata == {"age_approx": 63, "sex": "female", "anatom_site_general": "posterior torso"}
    assert items[b].patient_id == "P-17" and items[a].metadata["sex"] == "male"
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(
        download_file(at, media, "export_csv").content.decode("utf-8-sig")))}
    assert [(rows[n]["patient_id"], rows[n]["age_approx"], rows[n]["sex"]) for n in ("a.png", "b.png", "c.png")] == [
        ("P-17", "63", "male"), ("P-17", "63", "female"), ("", "", "")]
    # Nothing chosen: nothing changes, and the panel says why.
    at.text_input(key="patient_id_value").input("P-99").run()
    at.button(key="patient_apply").click().run()
    assert "Nothing applied: choose images and enter a patient ID or a value." in texts(at.caption)
    assert all(u.patient_id != "P-99" for u in session_uploads(at).values())


def test_clear_session_asks_before_discarding_decisions(app_env):
    at = new_app().run()
    c = three(at)[0]
    at.selectbox(key=f"decision_{c}").set_value("Biopsy").run()
    at.button(key="clear_session").click().run()
    assert len(session_uploads(at)) == 3 and "1 image has a review decision" in texts(at.sidebar.warning)
    at.button(key="clear_cancel").click().run()
    assert len(session_uploads(at)) == 3 and "review decision" not in texts(at.sidebar.warning)
    at.button(key="clear_session").click().run()
    at.button(key="clear_confirm").click().run()
    assert not at.exception and session_uploads(at) == {} and not card_buttons(at)


def test_worklist_sort_filter_summary_units():
    def item(name, light, risk, flags=()):
        return (SimpleNamespace(name=name), None if light is None else
                SimpleNamespace(traffic_light=light, risk=risk, flags=list(flags)))

    items = [item("b", "green", 0.1), item("A", "red", 0.9), item("c", "grey", 0.5, ["blurred"]), item("d", None, 0)]
    names = lambda its: [it[0].name for it in its]  # noqa: E731
    assert names(worklist.sort_items(items, "Name")) == ["A", "b", "c", "d"]
    # An image to retake comes right after red, above green: its risk is unknown, not low.
    assert names(worklist.sort_items(items, "Risk (highest first)")) == ["A", "c", "b", "d"]
    assert names(worklist.sort_items(items, "Traffic light")) == ["A", "c", "b", "d"]
    more = [*items, item("y", "yellow", 0.3), item("r", "red", 0.95)]
    assert names(worklist.sort_items(more, "Risk (highest first)")) == ["r", "A", "c", "y", "b", "d"]
    assert names(worklist.sort_items(items, "Upload order")) == ["b", "A", "c", "d"]
    items.append(item("e", "grey", 0.2, ["blurred", "too_dark"]))
    assert names(worklist.sort_items(items, "Quality flags first")) == ["e", "c", "b", "A", "d"]
    items.pop()
    assert names(worklist.filter_items(items, ["grey", "none"])) == ["c", "d"]
    assert names(worklist.filter_items(items, None, flagged_only=True)) == ["c"]
    assert worklist.summary(items) == "4 images: 1 high risk · 1 low risk · 1 not assessable · 1 not analysed"


def test_unload_guard_carries_the_image_count_and_is_disarmed_at_zero():

    armed, disarmed = unload_guard_js(3), unload_guard_js(0)
    assert "win.dlWorklistImages = 3;" in armed and "win.dlWorklistImages = 0;" in disarmed
    assert "beforeunload" in armed and "window.dlWorklistImages > 0" in armed
    assert "__COUNT__" not in armed


def test_the_gallery_keeps_its_sort_and_filters_after_a_visit_to_another_page(app_env):
    at = new_app().run()
    three(at)
    at.selectbox(key="gallery_sort").set_value("Name").run()
    at.checkbox(key="gallery_flagged").check().run()
    at = at.switch_page("pages/followup.py").run().switch_page("pages/triage.py").run()
    assert not at.exception
    assert at.selectbox(key="gallery_sort").value == "Name" and at.checkbox(key="gallery_flagged").value is True
