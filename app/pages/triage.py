"""Triage screen: upload dermoscopic images, see each one's risk, inspect one in the viewer, export.

Everything per user lives in ``st.session_state`` (``app.state``): each file is decoded once on
upload (``app.components.prepare_upload``) and that one picture is shown, predicted, explained and
searched with; predictions are computed once per image, model and metadata; Grad-CAMs once per
image and target, so the opacity slider and the display mode only re-blend cached heatmaps; similar
confirmed cases once per image, model and reference library (the library itself is loaded once per
process, ``app.resources``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import streamlit as st

from app import components as ui
from app import page_scripts, report, resources, state, worklist
from backend.data.schema import ANATOM_SITES, DIAGNOSES, SEXES
from backend.errors import DermaLensError
from backend.evaluation.card_sections import light_meaning
from backend.io.names import safe_stem
from backend.retrieval.library import LibraryModelMismatchError, model_identity
from backend.retrieval.query import similar_cases as find_similar_cases


def upload_limit_mb() -> int:
    """Largest accepted file in MB (``server.maxUploadSize``)."""
    try:
        return int(st.get_option("server.maxUploadSize"))
    except Exception:  # any config problem falls back to Streamlit's default
        return 200


# -- sidebar ----------------------------------------------------------------------------------------


def cam_controls() -> dict[str, Any]:
    """Grad-CAM switch, display mode, opacity and target (values persist across pages)."""
    with st.sidebar:
        st.header("Grad-CAM")
        enabled = st.toggle("Show Grad-CAM", key="cam_on", persist_state="session",
                            help="Highlight the image regions that drive the chosen output")
        mode = st.radio("Display", ui.CAM_MODES, key="cam_mode", disabled=not enabled, persist_state="session")
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="cam_opacity", persist_state="session",
                            disabled=not enabled or mode == "Heatmap only")
        target = st.selectbox("Target", [ui.PREDICTED, *DIAGNOSES, *ui.EXTRA_TARGETS], key="cam_target",
                              format_func=ui.target_label, disabled=not enabled, persist_state="session",
                              help="Explain a diagnosis, or the Breslow thickness output")
    return {"enabled": enabled, "mode": mode, "opacity": float(opacity), "target": target}


def session_controls() -> None:
    """Privacy note and the clear-session button."""
    with st.sidebar:
        st.header("Session")
        st.caption("Images stay in this browser session's memory only: other sessions never see them and "
                   "nothing is written to disk unless you export.")
        st.button("Clear session", key="clear_session", on_click=_ask_clear, icon=":material/delete_sweep:",
                  help="Forget every uploaded image and result of this session")
        if st.session_state.get(CONFIRM_CLEAR):
            count = state.unsaved_decisions()
            st.warning(f"{count} image{'s have' if count != 1 else ' has'} a review decision, note or ID, kept "
                       "only in this session. Clearing the session discards them: export the results table first "
                       "to keep them.")
            yes, no = st.columns(2)
            yes.button("Discard and clear", key="clear_confirm", type="primary", on_click=_confirm_clear)
            no.button("Cancel", key="clear_cancel", on_click=st.session_state.pop, args=(CONFIRM_CLEAR, None))


CONFIRM_CLEAR = "dl_confirm_clear"  # set while "Clear session" waits for confirmation
CONFIRM_REMOVE = state.CONFIRM_REMOVE


def _ask_remove(uid: str) -> None:
    """Remove an image at once, or ask first when its review decision, note or IDs would be lost."""
    upload = state.uploads().get(uid)
    if upload is not None and state.has_review(upload):
        st.session_state[CONFIRM_REMOVE] = uid
    else:
        _confirm_remove(uid)


def _removal_question(upload: state.Upload) -> None:
    """In the image's own card: what removing it would lose, "Keep it" first."""
    st.warning(f"{upload.name} has a review decision, note or ID, kept only in this session. Removing the "
               "image discards them: export the results table first to keep them.")
    st.button("Keep it", key="remove_cancel", type="primary", width="stretch",
              on_click=st.session_state.pop, args=(CONFIRM_REMOVE, None))
    st.button("Remove it and its review", key="remove_confirm", width="stretch", on_click=_confirm_remove,
              args=(upload.id,), help=f"Remove {upload.name} with its review decision, note and IDs")


def _confirm_remove(uid: str) -> None:
    st.session_state.pop(CONFIRM_REMOVE, None)
    state.remove_upload(uid)


def _ask_clear() -> None:
    """Clear at once, or ask first when review decisions or notes would be lost."""
    if state.unsaved_decisions():
        st.session_state[CONFIRM_CLEAR] = True
    else:
        _confirm_clear()


def _confirm_clear() -> None:
    st.session_state.pop(CONFIRM_CLEAR, None)
    state.clear_session()


# -- uploads and predictions --------------------------------------------------------------------


def ingest(files: list[Any]) -> None:
    """Decode new uploader files, once each, into session uploads; unreadable or oversize ones get a message."""
    seen, errors = state.seen(), state.errors()
    limit = upload_limit_mb()
    for file in files:
        if file.file_id in seen:
            continue
        data = file.getvalue()
        seen[file.file_id] = ""
        if len(data) > limit * 1024 * 1024:
            errors[file.file_id] = f"{file.name}: file is {len(data) / 1e6:.1f} MB, over the {limit} MB limit"
            continue
        try:
            prepared = ui.prepare_upload(file.name, data)
        except DermaLensError as err:
            errors[file.file_id] = str(err)
            continue
        except Exception as err:  # a decoder bug on one file never takes the page (or the other files) down
            errors[file.file_id] = f"{file.name}: could not be read: {ui.error_words(err)}"
            continue
        uid = state.upload_id(file.name, data)
        seen[file.file_id] = uid
        state.add_upload(state.Upload(uid, prepared, ui.thumbnail_png(prepared.image)))
    state.sync_uploader({file.file_id for file in files})  # a chip removed in the uploader leaves the gallery


def predict_pending(model: resources.LoadResult) -> None:
    """Predict every upload whose result is missing or stale (model or metadata changed), in one batch."""
    pending = [u for u in state.uploads().values() if not u.is_current(model.key) and not u.failed_with(model.key)]
    if not pending:
        return
    with st.spinner(f"Analysing {len(pending)} image{'s' if len(pending) > 1 else ''}…"):
        try:
            results = model.predictor.predict([u.prepared for u in pending],
                                              metadata=[u.metadata_for_model() for u in pending])
        except Exception:  # retried one by one below, so that only the culprit is reported
            results = None
        for i, upload in enumerate(pending):
            try:
                result = results[i] if results is not None else model.predictor.predict(
                    [upload.prepared], metadata=[upload.metadata_for_model()])[0]
            except Exception as err:  # one bad image never stops the others, nor the page
                # The image stays, with its metadata and review: a model that fails on every image
                # (a bad choice in the sidebar) must not empty the worklist.
                upload.failure = f"{upload.name}: could not be analysed: {ui.error_words(err)}"
                upload.failure_key, upload.prediction, upload.cams = (model.key, upload.metadata_key()), None, {}
                state.errors()[f"predict_{upload.id}"] = upload.failure
                continue
            if upload.show_anyway:
                # "Show anyway" was asked for an earlier result (before a new model, new metadata or a
                # failed analysis): the new result of a not-assessable image stays hidden until asked again.
                upload.show_anyway = False
                st.session_state.pop(f"show_anyway_{upload.id}", None)
            note_review_change(upload, result, model)
            upload.prediction, upload.prediction_key, upload.cams = result, (model.key, upload.metadata_key()), {}
            upload.failure, upload.failure_key = "", None
            state.errors().pop(f"predict_{upload.id}", None)


def note_review_change(upload: state.Upload, result: Any, model: resources.LoadResult) -> None:
    """Say so when ``result`` differs from the one the upload's decision was recorded on (clear it when it agrees).

    The comparison is with the reviewed result, not the last one: a failed analysis in between, or
    metadata changed and then put back, neither hides a change nor reports one that is gone.
    """
    if not upload.decision or upload.reviewed_on is None:
        return
    reviewed_key, reviewed_summary = upload.reviewed_on
    if ui.review_key(result) == reviewed_key:
        upload.changed_since_review = ""
        return
    why = ("the patient metadata changed" if upload.prediction_key and upload.prediction_key[0] == model.key
           else "the model or the metadata changed")
    upload.changed_since_review = (
        f"The result changed after {why}: when the decision was recorded it was {reviewed_summary}; it is now "
        f"{ui.result_summary(result)}. The decision \"{upload.decision}\" was recorded on the earlier result: "
        "review it again.")


def heatmap(model: resources.LoadResult, upload: state.Upload, target: str) -> Any:
    """The Grad-CAM of ``upload`` for ``target``, computed once and kept in the session (None on failure)."""
    if target not in upload.cams:
        with st.spinner(f"Computing Grad-CAM for {ui.target_label(target)}…"):
            try:
                upload.cams[target] = model.predictor.explain(upload.prepared, target=target,
                                                              metadata=upload.metadata_for_model() or None)
            except Exception as err:  # shown in place; the rest of the viewer still works
                st.error(f"Grad-CAM of {upload.name} for {ui.target_label(target)} failed: {ui.error_words(err)}")
                return None
    return upload.cams[target]


def current_prediction(upload: state.Upload, model: resources.LoadResult | None) -> Any:
    """The upload's prediction if it was made by ``model`` with the current metadata, else None."""
    return upload.prediction if model is not None and upload.is_current(model.key) else None


def resolve_target(target: str, upload: state.Upload) -> str:
    """The picker's choice as a Grad-CAM target name (by default the diagnosis the result leads with)."""
    return ui.diagnosis_headline(upload.prediction).code if target == ui.PREDICTED else target


# -- viewer ---------------------------------------------------------------------------------------


def _set_metadata(uid: str, field: str, key: str) -> None:
    upload = state.uploads().get(uid)
    if upload is not None:
        upload.metadata[field] = st.session_state.get(key)


def metadata_inputs(upload: state.Upload, model: resources.LoadResult | None) -> None:
    """Optional age, sex and site of the selected image; a change re-runs its prediction."""
    with st.expander("Patient metadata (optional)", expanded=upload.metadata_given()):
        if upload.changed_since_review:  # the full notice is at the top of the viewer, out of sight from here
            st.warning("The result changed: see the top of the viewer.", icon=":material/arrow_upward:")
        if model is not None:
            if model.predictor.uses_metadata:
                pred = current_prediction(upload, model)
                used = pred is not None and pred.metadata_used
                st.caption("This fusion model uses age, sex and site. "
                           + ("The values below are used for this image." if used else "None given yet."))
            else:
                st.info("This model is image-only: metadata is kept with the results and exports but not used "
                        "for the prediction.")
        # One under another at full width: three side by side left 47 px per box at 1280 px.
        age = sex = site = st.container()
        keys = {f: _seed(f"meta_{f}_{upload.id}", upload.metadata[f]) for f in state.METADATA_FIELDS}
        age.number_input(f"Age of {upload.name} (years)", min_value=0, max_value=120, step=1, value=None,
                         key=keys["age_approx"], on_change=_set_metadata,
                         args=(upload.id, "age_approx", keys["age_approx"]), placeholder="unknown")
        sex.selectbox(f"Sex of {upload.name}", [None, *SEXES], index=None, key=keys["sex"], placeholder="unknown",
                      format_func=lambda v: "unknown" if v is None else v,
                      on_change=_set_metadata, args=(upload.id, "sex", keys["sex"]))
        site.selectbox(f"Site of {upload.name}", [None, *ANATOM_SITES], index=None, placeholder="unknown",
                       format_func=lambda v: "unknown" if v is None else v, key=keys["anatom_site_general"],
                       on_change=_set_metadata,
                       args=(upload.id, "anatom_site_general", keys["anatom_site_general"]))


#: Similar confirmed cases shown per image.
SIMILAR_K = 10


def similar_cases(upload: state.Upload, model: resources.LoadResult, reference: resources.ReferenceLoad) -> Any:
    """The upload's similar confirmed cases, searched once per model and library (a message on failure)."""
    # The lesion and patient IDs typed for the image keep that lesion's and patient's own library cases out.
    key = (model.key, reference.key, SIMILAR_K, upload.lesion_id, upload.patient_id)
    if key not in upload.similar:
        with st.spinner("Searching similar confirmed cases…"):
            try:
                upload.similar[key] = find_similar_cases(
                    model.predictor, upload.prepared, reference.library, k=SIMILAR_K,
                    lesion_id=upload.lesion_id or None, patient_id=upload.patient_id or None,
                    model_path=resources.active_model_path())
            except LibraryModelMismatchError as err:
                upload.similar[key] = str(err)
            except DermaLensError as err:
                upload.similar[key] = f"Similar cases of {upload.name} could not be searched: {err}"
            except Exception as err:  # shown in place; the rest of the viewer still works
                upload.similar[key] = (f"Similar cases of {upload.name} could not be searched: "
                                       f"{ui.error_words(err)}")
    return upload.similar[key]


def similar_cases_panel(upload: state.Upload, model: resources.LoadResult | None,
                        reference: resources.ReferenceLoad | None) -> None:
    """The "Similar confirmed cases" panel: neighbours from the chosen library, or how to get one."""
    st.subheader("Similar confirmed cases")
    if reference is None:
        if state.reference_path() == resources.REFERENCE_OFF and resources.list_references():
            st.caption("Turned off in the sidebar (Reference library).")
        else:
            st.info(ui.reference_howto(resources.reference_dir(), resources.REFERENCE_DIR_ENV))
        return
    if reference.error:
        st.error(f"The reference library {reference.error}")
        return
    if model is None:
        st.info("Load a model to search the reference library.")
        return
    result = similar_cases(upload, model, reference)
    if isinstance(result, str):
        st.error(result)
        return
    ui.render_similar_cases(result)


def navigation(upload: state.Upload, order: list[str]) -> None:
    """Previous / next image (in gallery order) buttons, and the arrow keys that click them."""
    index = order.index(upload.id) if upload.id in order else -1
    position = f"Image {index + 1} of {len(order)}" if index >= 0 else "Not in the filtered gallery"
    prev, where, nxt = st.columns([1, 1, 1], vertical_alignment="center")
    prev.button("Previous image", key="viewer_prev", icon=":material/arrow_back:", width="stretch",
                disabled=not order or index == 0, on_click=state.step_selection, args=(order, -1),
                help="Previous image in the gallery (left arrow key)")
    where.caption(position)
    nxt.button("Next image", key="viewer_next", icon=":material/arrow_forward:", width="stretch",
               disabled=not order or index == len(order) - 1, on_click=state.step_selection, args=(order, 1),
               help="Next image in the gallery (right arrow key)")
    st.iframe(page_scripts.ARROW_KEYS_JS, height=1, tab_index=-1)  # same-origin: it may listen on the app's page


def _reconfirm(uid: str) -> None:
    """The clinician keeps the decision for the current result (choosing the same option again fires nothing)."""
    upload = state.uploads().get(uid)
    if upload is not None and upload.decision and upload.prediction is not None:
        state.set_review(uid, decision=upload.decision)
        _record_reviewed(upload)


def _record_reviewed(upload: state.Upload) -> None:
    """Remember the result a decision is recorded on (:func:`note_review_change` compares with it)."""
    if upload.decision and upload.prediction is not None:
        upload.reviewed_on = (ui.review_key(upload.prediction), ui.result_summary(upload.prediction))


def _set_review(uid: str, what: str, key: str) -> None:
    value = st.session_state.get(key)
    if value is None and what != "show_anyway":
        value = ""  # the widget was cleared (its x): the decision, note or ID is taken back, not kept
    state.set_review(uid, **{what: value})
    upload = state.uploads().get(uid)
    if what == "decision" and upload is not None:
        _record_reviewed(upload)


def _seed(key: str, value: Any) -> str:
    """Give the widget ``key`` its stored value on first draw; the widget is then drawn without a default.

    Values live in ``st.session_state`` (seeded here, changed by the widget or by a callback such as
    the group panel's), never in a ``value=`` argument: a keyed widget keeps what the browser holds
    and would ignore a changed default.
    """
    if key not in st.session_state:
        st.session_state[key] = value
    return key


def review_inputs(upload: state.Upload) -> None:
    """The clinician's decision, note, patient and lesion ID for this image (kept on the upload, exported)."""
    uid = upload.id
    decision, note = st.columns([1, 2])
    key = _seed(f"decision_{uid}", upload.decision or state.DECISIONS[0])
    decision.selectbox(f"Decision for {upload.name}", state.DECISIONS, index=None, key=key,
                       on_change=_set_review, args=(uid, "decision", key))
    key = _seed(f"note_{uid}", upload.note)
    note.text_input(f"Note on {upload.name}", value=None, key=key, on_change=_set_review, args=(uid, "note", key),
                    placeholder="Free text, exported with the results")
    patient, lesion = st.columns(2)
    key = _seed(f"pid_{uid}", upload.patient_id)
    patient.text_input(f"Patient ID of {upload.name}", value=None, key=key, on_change=_set_review,
                       args=(uid, "patient_id", key), placeholder="Optional, exported and printed on the report")
    key = _seed(f"lid_{uid}", upload.lesion_id)
    lesion.text_input(f"Lesion ID of {upload.name}", value=None, key=key, on_change=_set_review,
                      args=(uid, "lesion_id", key), placeholder="Optional, e.g. the lesion's number on the body map")


def viewer(upload: state.Upload, model: resources.LoadResult | None, cam: dict[str, Any],
           reference: resources.ReferenceLoad | None = None, order: list[str] | None = None) -> None:
    """The selected image (or its Grad-CAM), every result of its prediction and its similar confirmed cases.

    ``model`` is a loaded model or None; ``reference`` the session's reference library or None;
    ``order`` the gallery's upload ids as shown (previous / next follow it).
    """
    pred = current_prediction(upload, model)
    st.subheader(f"Viewer: {upload.name}")
    navigation(upload, order if order is not None else list(state.uploads()))
    shown = pred  # what the viewer reveals: nothing of a not-assessable image unless asked for
    if pred is not None and not ui.assessable(pred):
        key = _seed(f"show_anyway_{upload.id}", upload.show_anyway)
        if not ui.render_not_assessable(pred, key, upload.name, on_change=_set_review,
                                        args=(upload.id, "show_anyway", key)):
            shown = None
    # The result leads, across the viewer's width: the headline and the light are read first, not
    # below the picture; the charts get the width they need (a third of a 1280 px screen is too little).
    if upload.changed_since_review:
        st.warning(upload.changed_since_review, icon=":material/change_circle:")
        st.button(f"The decision \"{upload.decision}\" still applies to this result", key=f"reconfirm_{upload.id}",
                  on_click=_reconfirm, args=(upload.id,), icon=":material/check:",
                  help="Record the decision again, on the result shown now")
    if pred is None and model is not None and upload.failed_with(model.key):
        st.error(upload.failure, icon=":material/error:")
    elif pred is None:
        st.info("No prediction yet: load a model to analyse this image.")
    elif shown is None:
        st.info(f"{ui.NOT_ASSESSABLE_TITLE}. Use \"{ui.SHOW_ANYWAY}\" above to see the prediction.",
                icon=":material/block:")
    else:
        headline = ui.diagnosis_headline(pred)
        untrusted = "" if ui.assessable(pred) else " (image not assessable)"
        st.markdown(f"### {headline.title}: {ui.class_label(headline.code)}{untrusted}")
        if headline.note:
            st.caption(headline.note)
        ui.render_risk(pred, model.predictor.risk, model.predictor.card)
    review_inputs(upload)
    target = resolve_target(cam["target"], upload) if shown is not None else None
    heat = heatmap(model, upload, target) if cam["enabled"] and shown is not None else None
    side_by_side = heat is not None and cam["mode"] == "Side by side"
    if side_by_side:  # across the whole viewer, so each picture stays readable
        ui.render_cam(upload.image, heat, cam["mode"], cam["opacity"], f"Grad-CAM: {ui.target_label(target)}",
                      model.predictor.preprocessing)
    left, right = st.columns([1, 1], gap="large")
    with left:
        if heat is not None and not side_by_side:
            ui.render_cam(upload.image, heat, cam["mode"], cam["opacity"], f"Grad-CAM: {ui.target_label(target)}",
                          model.predictor.preprocessing)
        elif heat is None:
            st.image(upload.image, caption=upload.name, width="stretch", alt="Selected image")
            if cam["enabled"] and pred is None:
                st.caption("Grad-CAM needs a loaded model and a prediction.")
        metadata_inputs(upload, model)
    if shown is not None:
        with right:
            ui.render_thickness(pred, model.predictor.card)
            ui.render_quality(pred)
        ui.render_malignancy(pred)  # the bars across the viewer: beside the picture they had 230 px at 1280
        ui.render_classes(pred)
    if shown is not None or pred is None:
        similar_cases_panel(upload, model if shown is not None else None, reference)


# -- export ---------------------------------------------------------------------------------------


def _report_maker(upload: state.Upload, model: resources.LoadResult, cam: dict[str, Any], fmt: str) -> Any:
    """A function building the selected image's report when its download button is clicked.

    It captures plain values (no session access: Streamlit runs it outside the script), and reuses
    the cached Grad-CAM of the chosen target when there is one.
    """
    target = resolve_target(cam["target"], upload) if cam["enabled"] else ui.diagnosis_headline(upload.prediction).code
    cached = upload.cams.get(target)
    predictor, card = model.predictor, model.predictor.card
    prepared, image, name, metadata = upload.prepared, upload.image, upload.name, dict(upload.metadata)
    prediction, opacity = upload.prediction, cam["opacity"] if cam["enabled"] else 0.4
    preprocessing = dict(predictor.preprocessing)
    meaning = "" if prediction.traffic_light == "grey" else light_meaning(card or {}, prediction.traffic_light)
    ids = {"patient_id": upload.patient_id, "lesion_id": upload.lesion_id,
           "show_model_result": upload.show_anyway, "decision": report.decision_words(upload), "note": upload.note}

    def make() -> bytes:
        if report.result_hidden(prediction, ids["show_model_result"]):
            heat = None  # a not-assessable image's report leaves its Grad-CAM out: not computed either
        elif cached is not None:
            heat = cached
        else:
            heat = predictor.explain(prepared, target=target,
                                     metadata={k: v for k, v in metadata.items() if v not in (None, "")} or None)
        return report.build_report(
            image, None if heat is None else report.report_overlay(image, heat, opacity, preprocessing), prediction,
            fmt=fmt, image_name=name,
            model_name=str(card.get("name", "model")), model_version=str(card.get("version", "?")),
            cam_target=ui.target_label(target), metadata=metadata, risk_cfg=predictor.risk,
            created=datetime.now(timezone.utc), light_meaning=meaning, **ids)

    return make


def export_section(model: resources.LoadResult, cam: dict[str, Any]) -> None:
    """CSV of every result and the selected image's report (PNG or PDF), built in memory."""
    # Every analysed image, and every other one holding review work or a failure: the Clear-session
    # dialog promises that exporting the table keeps decisions and notes.
    uploads = [u for u in state.uploads().values()
               if current_prediction(u, model) is not None or report.has_review(u) or u.failure]
    if not uploads:
        return
    card = model.predictor.card
    st.subheader("Export")
    st.caption("Files are made in memory on request; uploaded files' EXIF data (camera, GPS, dates) never "
               "reaches them.")
    table, png, pdf = st.columns(3)
    table.download_button(
        "Results table (CSV)", report.results_csv(uploads, str(card.get("name", "model")),
                                                  str(card.get("version", "?")), shown=state.shown_anyway(),
                                                  is_current=lambda u: current_prediction(u, model) is not None,
                                                  risk_cfg=model.predictor.risk),
        file_name="dermalens_results.csv", mime="text/csv", key="export_csv", on_click="ignore",
        icon=":material/table_view:")
    upload = state.selected()
    if upload is None or current_prediction(upload, model) is None:
        return
    stem = safe_stem(upload.name)  # the uploaded name is client-supplied: no path, NUL or 10,000 characters
    png.download_button("Report of selected image (PNG)", _report_maker(upload, model, cam, "png"),
                        file_name=f"{stem}_dermalens_report.png", mime="image/png", key="export_png",
                        on_click="ignore", icon=":material/image:")
    pdf.download_button("Report of selected image (PDF)", _report_maker(upload, model, cam, "pdf"),
                        file_name=f"{stem}_dermalens_report.pdf", mime="application/pdf", key="export_pdf",
                        on_click="ignore", icon=":material/picture_as_pdf:")


# -- gallery / worklist -------------------------------------------------------------------------------


#: Widget keys of the group panel (patient ID and metadata typed once for several images).
GROUP_KEYS = {"images": "patient_images", "patient_id": "patient_id_value", "age_approx": "group_age",
              "sex": "group_sex", "anatom_site_general": "group_site"}


def _apply_group() -> None:
    uids = list(st.session_state.get(GROUP_KEYS["images"]) or [])
    metadata = {field: st.session_state.get(GROUP_KEYS[field]) for field in state.METADATA_FIELDS}
    changed = state.apply_to_group(uids, str(st.session_state.get(GROUP_KEYS["patient_id"]) or ""), metadata)
    st.session_state["group_applied"] = changed
    st.session_state[GROUP_KEYS["images"]] = []


def patient_group_inputs(uploads: list[state.Upload]) -> None:
    """Patient ID, age, sex and site typed once for a group of chosen images (used and exported with each)."""
    counts: dict[str, int] = {}
    for u in uploads:
        counts[u.name] = counts.get(u.name, 0) + 1
    # Labels must be unique (the widget maps a label back to its option): same-named files get a number.
    names = {u.id: u.name if counts[u.name] == 1 else f"{u.name} (image {i + 1})" for i, u in enumerate(uploads)}
    with st.expander("Patient ID and metadata for several images"):
        st.multiselect("Images of this patient", list(names), format_func=lambda uid: names.get(uid, uid),
                       key=GROUP_KEYS["images"], placeholder="Choose images")
        st.text_input("Patient ID", key=GROUP_KEYS["patient_id"])
        age = sex = site = st.container()  # one under another: the gallery pane is narrow
        age.number_input("Age (years)", min_value=0, max_value=120, step=1, value=None, placeholder="keep",
                         key=GROUP_KEYS["age_approx"])
        sex.selectbox("Sex", [None, *SEXES], format_func=lambda v: "keep each image's" if v is None else v,
                      key=GROUP_KEYS["sex"])
        site.selectbox("Anatomical site", [None, *ANATOM_SITES], key=GROUP_KEYS["anatom_site_general"],
                       format_func=lambda v: "keep each image's" if v is None else v)
        st.caption("Fields left empty keep each image's own value. Changed age, sex or site re-runs the "
                   "prediction of those images.")
        st.button("Apply to chosen images", key="patient_apply", on_click=_apply_group)
        applied = st.session_state.pop("group_applied", None)
        if applied is not None:
            st.caption(f"Applied to {applied} image{'s' if applied != 1 else ''}." if applied
                       else "Nothing applied: choose images and enter a patient ID or a value.")


def gallery(uploads: list[state.Upload], model: resources.LoadResult | None) -> list[tuple[Any, Any]]:
    """Summary line, sort and filter, and the cards; returns the (upload, prediction) pairs shown, in order."""
    items = [(u, current_prediction(u, model)) for u in uploads]
    st.caption(worklist.summary(items))
    order, lights = st.columns(2)
    kept = state.gallery_choices()  # the sort and filters come back after another page
    how = order.selectbox("Sort by", worklist.SORTS, key=state.kept_choice(kept, "gallery_sort", worklist.SORTS[0]),
                          on_change=state.keep_choice, args=(kept, "gallery_sort"))
    chosen = lights.multiselect("Show lights", worklist.LIGHT_CHOICES,
                                key=state.kept_choice(kept, "gallery_lights", []),
                                on_change=state.keep_choice, args=(kept, "gallery_lights"),
                                format_func=lambda c: worklist.LIGHT_WORDS[c].capitalize(), placeholder="All")
    flagged = st.checkbox("Only images with quality flags", key=state.kept_choice(kept, "gallery_flagged", False),
                          on_change=state.keep_choice, args=(kept, "gallery_flagged"))
    shown = worklist.sort_items(worklist.filter_items(items, chosen, flagged), how)
    total = len(uploads)
    count = f"{total}" if len(shown) == total else f"{len(shown)} of {total}"
    st.subheader(f"Gallery ({count} image{'s' if total > 1 else ''})")
    pending = st.session_state.get(CONFIRM_REMOVE)
    if pending in state.uploads() and pending not in {u.id for u, _ in shown}:
        st.session_state.pop(CONFIRM_REMOVE, None)  # its card is filtered out: nothing to answer there
    ui.render_gallery(shown, state.selected_id(), state.select, _ask_remove, pending_remove=pending,
                      confirm=_removal_question)
    if len(shown) < total:
        st.caption("Some images are hidden by the filter.")
    patient_group_inputs(uploads)
    return shown


# -- page -----------------------------------------------------------------------------------------


def main() -> None:
    """Render the triage screen."""
    state.init()
    state.note_page("Triage")
    st.title("DermaLens")
    st.markdown(ui.DISCLAIMER)
    limit = upload_limit_mb()
    files = st.file_uploader(  # before the model loads, so files can be dropped while it does
        f"Dermoscopic images (JPEG, PNG, BMP, TIFF; up to {limit} MB each)", type=list(ui.ACCEPTED_TYPES),
        accept_multiple_files=True, key=state.uploader_key(), max_upload_size=limit,
        help="Drag and drop or browse; several files at once. They stay in this session only.") or []
    messages = st.container()  # under the uploader: one message per file that could not be used
    model = resources.model_sidebar()
    cam = cam_controls()
    reference = resources.reference_sidebar(model_identity(model.predictor).sha256
                                            if model is not None and model.predictor is not None else "")
    session_controls()
    ingest(files)

    if model is None:
        st.warning("No model is loaded, so images are shown without results. Choose a model in the sidebar.")
    elif model.error:
        st.error(f"The selected model could not be loaded: {model.error}")
    ready = model if model is not None and model.predictor is not None else None
    if ready is not None:
        predict_pending(ready)
    with messages:  # unreadable files stay listed until dismissed, their chip removed or the session cleared
        for key, message in list(state.errors().items()):
            if key.startswith("predict_"):
                if key.removeprefix("predict_") in state.uploads():
                    st.error(message)
                continue
            st.error(message)
            st.button("Dismiss", key=f"dismiss_{key}", on_click=state.errors().pop, args=(key, None),
                      help="Remove this message (the file was not added to the worklist)")

    uploads = list(state.uploads().values())
    st.iframe(page_scripts.unload_guard_js(len(uploads)), height=1, tab_index=-1)  # same-origin: guards the app's page
    if not uploads:
        st.info("Upload one or more dermoscopic images to start.")
        return
    # Master-detail: the viewer column comes first in the page, so it is on top when Streamlit stacks
    # the columns on a narrow screen; on a wide one page_scripts.MASTER_DETAIL_CSS puts the gallery left.
    st.html(page_scripts.MASTER_DETAIL_CSS)
    detail, master = st.columns([3, 2], gap="medium")
    with master, st.container(key="dl_gallery_pane"):
        shown = gallery(uploads, ready)
    selected = state.selected()
    if selected is not None:
        with detail, st.container(key="dl_viewer_pane"):
            viewer(selected, ready, cam, reference, [u.id for u, _ in shown])
    if ready is not None:
        st.divider()
        export_section(ready, cam)


main()
