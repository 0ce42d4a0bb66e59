"""Per-session state of the dashboard: uploads, selection and model choice, only in ``st.session_state``.

Patient images never leave the user's session: nothing here is a module global, a
``st.cache_data`` entry or a file. Each upload is one :class:`Upload` keyed by a hash of its name
and content, holding the picture decoded once (a ``PreparedInput``: the same pixels are shown,
predicted, explained and searched with, and their network input is computed once per model), the
patient metadata typed in for it, the prediction (computed once per model + metadata) and the
Grad-CAM heatmaps (one per target), so moving the opacity slider or switching display mode never
recomputes anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from backend.inference.inputs import PreparedInput

UPLOADS = "dl_uploads"  # {upload id: Upload}, in upload order
SELECTED = "dl_selected"  # upload id shown in the main viewer, or None
ERRORS = "dl_errors"  # {uploader file id: message} for files that could not be read
GALLERY_CHOICES = "dl_gallery_view"  # {widget key: value}: the gallery's sort and filters
SEEN = "dl_seen"  # {uploader file id: upload id}: uploader files already handled
IN_UPLOADER = "dl_in_uploader"  # uploader file ids the current uploader widget held on the last run
PAGE = "dl_page"  # title of the page the last run showed
MODEL_PATH = "dl_model_path"  # the model chosen in the sidebar (str), or None for the default
UPLOADER_NONCE = "dl_uploader_nonce"  # bumped by "Clear session" to empty the file uploader
CONFIRM_REMOVE = "dl_confirm_remove"  # the upload whose removal waits for confirmation (it holds a review)
FOLLOWUP = "dl_followup"  # the Follow-up screen's uploads and comparisons (see followup())
REFERENCE_PATH = "dl_reference_path"  # the reference library chosen in the sidebar, or None for the first

#: Metadata keys an upload may carry (the names ``Predictor.predict`` takes).
METADATA_FIELDS: tuple[str, ...] = ("age_approx", "sex", "anatom_site_general")

#: Review decisions a clinician can record per image; the first means "not reviewed yet" (stored as "").
DECISIONS: tuple[str, ...] = ("Not reviewed", "Excise", "Biopsy", "Follow up", "Benign, no action")

#: Prefixes of per-image widget keys, dropped with their image (and all of them on "Clear session").
PER_IMAGE_KEYS: tuple[str, ...] = ("meta_", "decision_", "note_", "show_anyway_", "pid_", "lid_")


def upload_id(name: str, data: bytes) -> str:
    """A stable id of an upload: SHA-256 of its name and content (16 hex digits, safe in widget keys)."""
    digest = hashlib.sha256()
    digest.update(name.encode("utf-8", "replace"))
    digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()[:16]


@dataclass
class Upload:
    """One uploaded image and everything computed for it in this session.

    Attributes:
        id: :func:`upload_id` of the file.
        prepared: The file decoded once (``app.components.prepare_upload``): its name, bytes and RGB
            picture (reduced size for large files), which the predictor reads without decoding again.
        thumbnail: PNG bytes of the gallery thumbnail (made once).
        metadata: Patient metadata typed in for this image (values may be None).
        prediction: ``backend.inference.Prediction`` or None while not computed.
        prediction_key: (model key, metadata) the prediction was computed for.
        cams: Grad-CAM heatmaps by target name, for ``prediction_key``'s model and metadata.
        similar: Similar confirmed cases (``backend.retrieval.SimilarCases``) by (model key,
            library key, k), or the message of a failed search.
        decision: The clinician's review decision (one of :data:`DECISIONS` but the first; empty
            while not reviewed), exported with the results.
        note: The clinician's free-text note on this image.
        patient_id: Patient ID typed in for this image (exported; empty when not given).
        lesion_id: Lesion ID typed in for this image (exported; empty when not given).
        show_anyway: The clinician asked to see the result of this not-assessable image anyway
            (kept here, not only in its toggle, which Streamlit forgets while another image is shown).
        failure: Why the model could not analyse this image (empty when it could); the image, its
            metadata and review stay in the worklist.
        failure_key: (model key, metadata) the failure happened with: not retried until one changes.
        reviewed_on: ``(review key, summary)`` of the result shown when the decision was recorded
            (``app.components.review_key`` and ``result_summary``); None without a decision.
        changed_since_review: What changed, in words, when the current result (new metadata or model)
            differs from the one the decision was recorded on; empty when it does not (again).
    """

    id: str
    prepared: PreparedInput
    thumbnail: bytes
    metadata: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(METADATA_FIELDS))
    prediction: Any = None
    prediction_key: tuple | None = None
    cams: dict[str, Any] = field(default_factory=dict)
    similar: dict[tuple, Any] = field(default_factory=dict)
    decision: str = ""
    note: str = ""
    patient_id: str = ""
    lesion_id: str = ""
    show_anyway: bool = False
    failure: str = ""
    failure_key: tuple | None = None
    reviewed_on: tuple | None = None
    changed_since_review: str = ""

    @property
    def name(self) -> str:
        """The file name as uploaded."""
        return self.prepared.name

    @property
    def data(self) -> bytes:
        """The file's bytes."""
        return self.prepared.getvalue()

    @property
    def image(self) -> Any:
        """The decoded RGB uint8 picture (shown, predicted, explained)."""
        return self.prepared.image

    def metadata_key(self) -> tuple:
        """Hashable form of :attr:`metadata` (part of the prediction cache key)."""
        return tuple((k, self.metadata.get(k)) for k in METADATA_FIELDS)

    def metadata_given(self) -> bool:
        """Whether any metadata value was entered."""
        return any(v not in (None, "") for v in self.metadata.values())

    def metadata_for_model(self) -> dict[str, Any]:
        """Metadata as ``Predictor.predict`` takes it (unknown values left out)."""
        return {k: v for k, v in self.metadata.items() if v not in (None, "")}

    def failed_with(self, model_key: str) -> bool:
        """Whether this model already failed on the image with its current metadata (no retry at every rerun)."""
        return self.failure_key == (model_key, self.metadata_key())

    def is_current(self, model_key: str) -> bool:
        """Whether the stored prediction belongs to this model and the current metadata."""
        return self.prediction is not None and self.prediction_key == (model_key, self.metadata_key())


def init() -> None:
    """Create this session's keys on first run (idempotent)."""
    defaults: dict[str, Any] = {UPLOADS: {}, SELECTED: None, ERRORS: {}, SEEN: {}, IN_UPLOADER: set(), MODEL_PATH: None,
                                UPLOADER_NONCE: 0, FOLLOWUP: new_followup(), REFERENCE_PATH: None}
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value


def new_followup() -> dict[str, Any]:
    """Empty Follow-up screen state.

    ``pair`` {uploader file id: FollowUpImage or message}: files decoded once; ``kept`` {role: image}:
    the baseline and follow-up chosen, kept while the uploaders are not drawn (another source or page);
    ``in_uploader`` {role: file id}: what each uploader held on its last run; ``results`` {key: result}.
    """
    return {"pair": {}, "kept": {}, "in_uploader": {}, "results": {}, "nonce": 0}


def gallery_choices() -> dict[str, Any]:
    """The gallery's sort and filters as last chosen (:func:`kept_choice`)."""
    return st.session_state.setdefault(GALLERY_CHOICES, {})


def kept_choice(choices: dict[str, Any], key: str, default: Any, options: Sequence[Any] | None = None) -> str:
    """Seed the widget ``key`` with the clinician's earlier choice from ``choices`` (else ``default``).

    Streamlit forgets a widget's value on another page; the clinician's own choices (recorded by
    :func:`keep_choice`, the widget's ``on_change``) come back, while an untouched widget follows its
    default. With ``options``, a value no longer among them (an image since removed) is replaced.
    """
    gone = options is not None and key in st.session_state and st.session_state[key] not in (*options, None)
    if key not in st.session_state or gone:
        stored = choices.get(key, default)
        st.session_state[key] = stored if options is None or stored in options else default
    return key


def keep_choice(choices: dict[str, Any], key: str) -> None:
    """Record the widget ``key``'s value in ``choices`` (its ``on_change``)."""
    choices[key] = st.session_state[key]


def followup() -> dict[str, Any]:
    """This session's Follow-up screen state (uploaded pair images and computed comparisons)."""
    init()
    return st.session_state[FOLLOWUP]


def clear_followup() -> None:
    """Forget the Follow-up screen's uploads and comparisons (its uploaders are emptied too)."""
    init()
    nonce = st.session_state[FOLLOWUP].get("nonce", 0) + 1
    st.session_state[FOLLOWUP] = {**new_followup(), "nonce": nonce}


def uploads() -> dict[str, Upload]:
    """This session's uploads by id, in upload order."""
    init()
    return st.session_state[UPLOADS]


def errors() -> dict[str, str]:
    """Messages for files of this session that could not be read, by uploader file id."""
    init()
    return st.session_state[ERRORS]


def seen() -> dict[str, str]:
    """Uploader file ids already handled -> upload id (empty string for a rejected file)."""
    init()
    return st.session_state[SEEN]


def add_upload(upload: Upload) -> None:
    """Store an upload (an identical file uploaded twice is kept once); select it if nothing is."""
    items = uploads()
    items.setdefault(upload.id, upload)
    if selected_id() is None:
        select(upload.id)


def remove_upload(uid: str) -> None:
    """Drop one upload and everything computed for it, from the gallery and the file uploader alike.

    The uploader keeps its own file list, so it gets a new key (an empty widget); the other images
    stay, since processed uploads live in :func:`uploads`, and the removed file is not re-ingested.
    """
    _forget(uid)
    st.session_state[UPLOADER_NONCE] += 1
    st.session_state[IN_UPLOADER] = set()


def note_page(title: str) -> None:
    """Record the page this run shows (each page calls it first).

    Back from another page, the uploader starts empty (Streamlit forgets the state of widgets a page
    did not draw): that is no removal, so the record of what the uploader held is cleared here, once
    per page change, whatever happens later in the run.
    """
    if st.session_state.get(PAGE) != title:
        st.session_state[IN_UPLOADER] = set()
        followup()["in_uploader"] = {}  # its uploaders start empty too: no chip was removed
    st.session_state[PAGE] = title


def sync_uploader(file_ids: set[str]) -> list[str]:
    """Drop the gallery images whose file the user removed from the uploader (its chip's x).

    A file that could not be read has no image, only its message (:func:`errors`); removing its chip
    drops the message. The app's own emptying of the uploader (a card removed, another page) does
    not: the message stays until it is dismissed, its chip is removed or the session is cleared, so a
    file that was never analysed cannot vanish from the worklist unnoticed.

    ``file_ids`` are the uploader's files on this run (after :func:`seen` maps new ones). An image
    goes when a file the same uploader held on the previous run is gone and no file still held is
    the same image; coming back from another page drops nothing. Returns the ids of the images dropped.
    """
    previous = st.session_state.get(IN_UPLOADER) or set()
    st.session_state[IN_UPLOADER] = set(file_ids)
    for fid in previous - set(file_ids):  # its chip removed: the message about that file goes with it
        errors().pop(fid, None)
    known = seen()
    kept = {known.get(fid) for fid in file_ids}
    gone = [known.get(fid) for fid in previous - set(file_ids)]
    dropped = [uid for uid in dict.fromkeys(gone) if uid and uid not in kept and uid in uploads()]
    for uid in list(dropped):
        if has_review(uploads()[uid]):
            # Its decision, note or IDs would go with it: the image stays, and the page asks first.
            st.session_state[CONFIRM_REMOVE] = uid
            dropped.remove(uid)
        else:
            _forget(uid)
    return dropped


def has_review(upload: Any) -> bool:
    """Whether the clinician entered anything on the upload (decision, note, patient or lesion ID)."""
    return any(str(getattr(upload, k, "") or "").strip() for k in ("decision", "note", "patient_id", "lesion_id"))


def _forget(uid: str) -> None:
    """Drop one upload, its results and widget values; select its neighbour if it was selected."""
    items = uploads()
    order = list(items)
    items.pop(uid, None)
    if st.session_state[SELECTED] == uid:
        index = order.index(uid) if uid in order else 0
        rest = [u for u in order if u != uid]
        st.session_state[SELECTED] = rest[min(index, len(rest) - 1)] if rest else None
    _drop_widget_keys(uid)


def _drop_widget_keys(uid: str | None = None) -> None:
    """Forget per-image widget values (of image ``uid``, or of every image when None)."""
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(PER_IMAGE_KEYS) and (uid is None or key.endswith(f"_{uid}")):
            del st.session_state[key]


def step_selection(order: list[str], step: int) -> None:
    """Select the image ``step`` places after the selected one in ``order`` (the gallery's order).

    Stops at either end; when the selected image is not in ``order`` (filtered out), the first
    (``step`` > 0) or last image of ``order`` is selected.
    """
    if not order:
        return
    current = selected_id()
    if current not in order:
        select(order[0] if step > 0 else order[-1])
        return
    select(order[max(0, min(len(order) - 1, order.index(current) + step))])


def unsaved_decisions() -> int:
    """How many images carry a review decision, note, patient or lesion ID (lost by "Clear session")."""
    return sum(1 for u in uploads().values() if u.decision or u.note.strip() or u.patient_id or u.lesion_id)


def shown_anyway() -> set[str]:
    """Ids of the not-assessable uploads whose result the clinician asked to see ("show anyway" on)."""
    return {uid for uid, upload in uploads().items() if upload.show_anyway}


def set_review(uid: str, decision: str | None = None, note: str | None = None, patient_id: str | None = None,
               lesion_id: str | None = None, show_anyway: bool | None = None) -> None:
    """Record upload ``uid``'s review: ``decision``, ``note``, patient or lesion ID, or "show the result anyway".

    ``decision`` is a :data:`DECISIONS` entry; ``show_anyway`` whether the not-assessable image's result is shown.
    """
    upload = uploads().get(uid)
    if upload is None:
        return
    if decision is not None:
        upload.decision = "" if decision == DECISIONS[0] else decision
        upload.changed_since_review = ""  # decided again, on the result shown now (the page records it)
        if not upload.decision:
            upload.reviewed_on = None
    if note is not None:
        upload.note = note
    if patient_id is not None:
        upload.patient_id = patient_id.strip()
    if lesion_id is not None:
        upload.lesion_id = lesion_id.strip()
    if show_anyway is not None:
        upload.show_anyway = bool(show_anyway)


def apply_to_group(uids: list[str], patient_id: str = "", metadata: dict[str, Any] | None = None) -> int:
    """Give every upload in ``uids`` one patient ID and metadata, entered once for a group of images.

    Only what was given is applied: an empty ``patient_id`` or a metadata value of None keeps each
    image's own value. Changed metadata makes the images' predictions stale (re-run on the next pass),
    and their per-image widgets are set so the viewer shows the new values.

    Returns:
        How many uploads were changed.
    """
    given = {k: v for k, v in (metadata or {}).items() if k in METADATA_FIELDS and v not in (None, "")}
    patient_id = patient_id.strip()
    changed = 0
    for uid in uids:
        upload = uploads().get(uid)
        if upload is None or not (patient_id or given):
            continue
        if patient_id:
            upload.patient_id = patient_id
        upload.metadata.update(given)
        # The viewer's own fields show the new values: set, not dropped (a keyed widget keeps what the
        # browser holds unless its state is set; this runs in a callback, before the widgets are drawn).
        st.session_state[f"pid_{uid}"] = upload.patient_id
        for name in METADATA_FIELDS:
            st.session_state[f"meta_{name}_{uid}"] = upload.metadata[name]
        changed += 1
    return changed


def selected_id() -> str | None:
    """The id of the image in the main viewer (None when there are no uploads)."""
    init()
    uid = st.session_state[SELECTED]
    return uid if uid in st.session_state[UPLOADS] else None


def selected() -> Upload | None:
    """The upload in the main viewer."""
    uid = selected_id()
    return None if uid is None else uploads()[uid]


def select(uid: str) -> None:
    """Show upload ``uid`` in the main viewer (a card's "Select <name>" button)."""
    init()
    st.session_state[SELECTED] = uid


def model_path() -> str | None:
    """The model chosen in the sidebar, or None for the default model."""
    init()
    return st.session_state[MODEL_PATH]


def set_model_path(path: str | None) -> None:
    """Choose the model for this session (None: the default model)."""
    init()
    st.session_state[MODEL_PATH] = path


def reference_path() -> str | None:
    """The reference library chosen in the sidebar (``app.resources.REFERENCE_OFF`` for none), or None."""
    init()
    return st.session_state[REFERENCE_PATH]


def set_reference_path(path: str | None) -> None:
    """Choose this session's reference library (None: the first one listed)."""
    init()
    st.session_state[REFERENCE_PATH] = path


def uploader_key() -> str:
    """Widget key of the file uploader; changes when the session is cleared, which empties it."""
    init()
    return f"uploader_{st.session_state[UPLOADER_NONCE]}"


def clear_session() -> None:
    """Forget every upload, result and message of this session (the "Clear session" button).

    The uploader is emptied by giving it a new key (its files are dropped with the old widget);
    per-image widget values (metadata) go too.
    """
    init()
    st.session_state[UPLOADS] = {}
    st.session_state[SELECTED] = None
    st.session_state[ERRORS] = {}
    st.session_state[SEEN] = {}
    st.session_state[IN_UPLOADER] = set()
    st.session_state[UPLOADER_NONCE] += 1
    clear_followup()
    _drop_widget_keys()
