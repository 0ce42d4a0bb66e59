"""Follow-up screen: compare two visits of one lesion (aligned side by side, blend/swipe, change map, measures).

The pair comes from the triage worklist or from two uploaders here. Images and results live only in
``st.session_state`` (``app.state.followup()``), nothing is written to disk, and each comparison is
computed once per pair and model, so moving the blend slider only re-mixes two cached pictures.
The model is the session's one from the sidebar, loaded exactly as the Triage screen loads it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from app import components as ui
from app import followup_view as view
from app import resources, state
from backend.errors import DermaLensError
from backend.followup import compare_visits
from backend.followup.render import blend, change_map_image, comparison_image, outside_view, swipe
from backend.inference.inputs import PreparedInput
from backend.io.names import safe_stem

SOURCES: tuple[str, ...] = ("Upload a pair", "From the triage worklist")
MAX_RESULTS = 4  # comparisons kept per session (a few pairs, not an archive)


@dataclass(frozen=True)
class VisitImage:
    """One photo of the pair: its id, the file decoded once and the patient metadata typed for it on Triage.

    The model reads the file as it is, and a fusion model the metadata (None for a photo uploaded
    here), so a worklist image gets the same risk on both screens.
    """

    id: str
    prepared: PreparedInput
    metadata: dict[str, Any] | None = None

    def metadata_key(self) -> tuple:
        """Hashable form of :attr:`metadata` (part of the comparison's cache key)."""
        return tuple(sorted((self.metadata or {}).items()))

    @property
    def name(self) -> str:
        """The file name as uploaded."""
        return self.prepared.name

    @property
    def image(self) -> Any:
        """The decoded RGB uint8 picture."""
        return self.prepared.image


# -- choosing the pair ------------------------------------------------------------------------------


def decode_upload(file: Any) -> VisitImage | str:
    """An uploader file as a :class:`VisitImage`, or the message naming it when it cannot be read.

    Args:
        file: A Streamlit ``UploadedFile``.
    """
    data = file.getvalue()
    try:
        prepared = ui.prepare_upload(file.name, data)
    except DermaLensError as err:
        return str(err)
    return VisitImage(state.upload_id(file.name, data), prepared)


def uploaded_pair() -> tuple[VisitImage, VisitImage] | None:
    """Two uploaders (baseline, follow-up); decoded files are kept in the session, errors shown in place.

    Streamlit empties an uploader that was not drawn (the other source chosen, another page): the
    photos chosen before are kept and said so, until another photo replaces one, its chip is removed
    or the follow-up is cleared.
    """
    store = state.followup()
    store.setdefault("kept", {})
    store.setdefault("in_uploader", {})
    nonce = store.get("nonce", 0)
    columns = st.columns(2)
    chosen: list[VisitImage | None] = []
    files: list[Any] = []
    for column, (role, label) in zip(columns, (("before", "Baseline (earlier visit)"),
                                               ("after", "Follow-up (later visit)")), strict=True):
        with column:
            file = st.file_uploader(label, type=list(ui.ACCEPTED_TYPES), key=f"fu_{role}_{nonce}",
                                    help="Stays in this browser session only")
            files.append(file)
            held_before = store["in_uploader"].get(role)
            store["in_uploader"][role] = None if file is None else file.file_id
            if file is None:
                if held_before:  # its chip removed in this uploader: the photo goes
                    store["kept"].pop(role, None)
                kept = store["kept"].get(role)
                if kept is not None:
                    st.caption(f"Kept from before: {kept.name}. Upload another photo to replace it.")
                chosen.append(kept)
                continue
            item = store["pair"].get(file.file_id)
            if item is None:
                item = decode_upload(file)
                store["pair"][file.file_id] = item
            if isinstance(item, str):
                st.error(item)
                store["kept"].pop(role, None)
                chosen.append(None)
            else:
                store["kept"][role] = item
                chosen.append(item)
    live = {f.file_id for f in files if f is not None}
    for file_id in [k for k in store["pair"] if k not in live]:
        del store["pair"][file_id]  # decoded files no uploader holds (the kept photos stay in "kept")
    before, after = chosen
    return (before, after) if before is not None and after is not None else None


def _choices() -> dict[str, Any]:
    """The follow-up screen's choices (:func:`app.state.kept_choice`), forgotten with "Clear follow-up"."""
    return state.followup().setdefault("choices", {})


def worklist_pair() -> tuple[VisitImage, VisitImage] | None:
    """Two images of the triage worklist picked as baseline and follow-up."""
    uploads = state.uploads()
    if len(uploads) < 2:
        st.info(f"The triage worklist holds {len(uploads)} image{'s' if len(uploads) != 1 else ''}: upload at "
                "least two on the Triage screen, or upload a pair here.")
        return None
    ids = list(uploads)
    names = {uid: uploads[uid].name for uid in ids}
    pair = view.default_pair(uploads)
    left, right = st.columns(2)
    kept = _choices()
    first = left.selectbox("Baseline (earlier visit)", ids, index=None, format_func=names.get,
                           key=state.kept_choice(kept, "fu_pick_before", None if pair is None else pair[0], ids),
                           on_change=state.keep_choice, args=(kept, "fu_pick_before"),
                           placeholder="Choose the earlier photo")
    second = right.selectbox("Follow-up (later visit)", ids, index=None, format_func=names.get,
                             key=state.kept_choice(kept, "fu_pick_after", None if pair is None else pair[1], ids),
                             on_change=state.keep_choice, args=(kept, "fu_pick_after"),
                             placeholder="Choose the later photo")
    if first is None or second is None:
        st.info("Choose the two photos of the same lesion: no two images of the worklist share a lesion ID.")
        return None
    if first == second:
        st.warning("Choose two different images.")
        return None
    return tuple(VisitImage(u.id, u.prepared, u.metadata_for_model() or None)  # type: ignore[return-value]
                 for u in (uploads[first], uploads[second]))


# -- comparing --------------------------------------------------------------------------------------


def comparison(before: VisitImage, after: VisitImage, model: resources.LoadResult | None) -> Any:
    """The pair's ``FollowUpResult`` (computed once per pair and model), or the message saying why not.

    Args:
        before: Baseline photo.
        after: Follow-up photo.
        model: The session's model (None or failed: no risk).
    """
    predictor = model.predictor if model is not None and model.predictor is not None else None
    key = (before.id, after.id, model.key if predictor is not None else None, before.metadata_key(),
           after.metadata_key())
    results = state.followup()["results"]
    if key not in results:
        with st.spinner("Aligning the photos and measuring the change…"):
            try:
                results[key] = compare_visits(
                    np.asarray(before.image), np.asarray(after.image), predictor, before_name=before.name,
                    after_name=after.name, model_inputs=(before.prepared, after.prepared),
                    model_metadata=(before.metadata, after.metadata))
            except DermaLensError as err:
                results[key] = str(err)
            except Exception as err:  # a backend bug must not take the screen down
                results[key] = f"The comparison failed: {ui.error_words(err)}"
        while len(results) > MAX_RESULTS:
            results.pop(next(iter(results)))
    return results[key]


# -- showing ----------------------------------------------------------------------------------------


def show_not_aligned(result: Any, before: VisitImage, after: VisitImage) -> None:
    """Say plainly that the pair could not be aligned; the photos are shown apart, never overlaid.

    Args:
        result: The unaligned ``FollowUpResult``.
        before: Baseline photo.
        after: Follow-up photo.
    """
    st.error(f"These two photos could not be aligned, so no overlay and no change measures are shown. "
             f"Reason: {result.reason}. Check that both photos show the same lesion with some skin around it.")
    left, right = st.columns(2)
    left.image(before.image, caption=f"Baseline: {before.name}", width="stretch", alt=f"Baseline photo {before.name}")
    right.image(after.image, caption=f"Follow-up (not aligned): {after.name}", width="stretch",
                alt=f"Follow-up photo {after.name}, not aligned")
    for line in view.risk_sentences(result):
        st.markdown(f"- {line}")


def compare_view(result: Any) -> None:
    """Blend or swipe between the baseline and the aligned follow-up.

    Args:
        result: An aligned ``FollowUpResult``.
    """
    mode = st.radio("Compare by", ("Blend", "Swipe"), horizontal=True, key="fu_mode",
                    help="Blend cross-fades the two visits; swipe shows the baseline left of the line")
    amount = st.slider("Baseline ⟷ follow-up", 0, 100, 50, 5, key="fu_amount", format="%d%%")
    after = outside_view(result.after_aligned, result.common)
    picture = blend(result.before, after, amount / 100) if mode == "Blend" else swipe(result.before, after,
                                                                                      amount / 100)
    # At most the photos' own width: a 256 px visit blown up to a 1,460 px screen only blurs.
    st.image(picture, caption=f"{mode}: {amount}% follow-up" if mode == "Blend" else f"Swipe at {amount}%",
             alt=f"The two visits compared by {mode.lower()}",
             width=min(int(picture.shape[1]) * 2, 720))


def show_aligned(result: Any) -> None:
    """The measures in words first, then side by side, blend/swipe and the change map.

    Args:
        result: An aligned ``FollowUpResult``.
    """
    # The measured change leads, right under the pickers: the pictures that show it follow.
    st.subheader("Measured change")
    metrics = view.metric_values(result)
    for column, (label, value, delta) in zip(st.columns(max(1, len(metrics))), metrics, strict=False):
        # A rise of risk or size is bad news (red), a fall good news (green): only ever between two
        # assessable visits (view.metric_values leaves the risk out otherwise).
        # No green or red on a change of risk: a lower score at the second visit is no good news by
        # itself (both visits may be red), and a few hundredths are within the model's noise.
        column.metric(label, value, delta, delta_color="off")
    changed, findings = view.findings_markdown(result)
    if changed:  # growth, a new colour or border, a risk rise: set apart from the neutral measures
        st.warning(findings, icon=":material/priority_high:")
    else:
        st.caption(findings)
    st.markdown("\n".join(f"- {line}" for line in view.measure_sentences(result)))
    for flag in view.caution_flags(result):
        st.warning(flag[0].upper() + flag[1:])
    st.subheader("Aligned photos")
    st.image(comparison_image(result), width="stretch",
             alt="Baseline and aligned follow-up side by side, lesions outlined",
             caption="Baseline lesion outlined in white, follow-up lesion in cyan; grey: not in both photos")
    compare_view(result)
    st.subheader("Change map")
    st.image(change_map_image(result), width="stretch", alt="Change map: where the outline and the colour changed",
             caption="Left: where the outline moved. Right: per-pixel colour difference inside the lesion.")
    export_comparison(result)


def export_comparison(result: Any) -> None:
    """The comparison's measures (JSON, as ``scripts/compare_visits.py`` writes them) and its pictures (PNG).

    Made in memory from pixel arrays when a button is clicked: no EXIF or other metadata of the
    uploaded files reaches them, and nothing is written to the server's disk.
    """
    st.subheader("Export")
    stem = f"followup_{safe_stem(result.before_name)}_{safe_stem(result.after_name)}"
    measures, pictures = st.columns(2)
    measures.download_button("Measures (JSON)", key="fu_export_json", file_name=f"{stem}.json",
                             mime="application/json", icon=":material/download:", on_click="ignore",
                             data=lambda: json.dumps(result.to_dict(), indent=2).encode("utf-8"))
    pictures.download_button("Aligned photos and change map (PNG)", key="fu_export_png", file_name=f"{stem}.png",
                             mime="image/png", icon=":material/download:", on_click="ignore",
                             data=lambda: png_bytes(np.vstack(_same_width(comparison_image(result),
                                                                          change_map_image(result)))))
    st.caption("Made in memory on request; the files carry no metadata of the uploaded photos.")


def _same_width(top: np.ndarray, bottom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad the narrower of two RGB pictures with white on the right so they stack."""
    width = max(top.shape[1], bottom.shape[1])
    pad = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in (top, bottom)]
    return pad[0], pad[1]


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of an RGB array (no EXIF: the file is made from pixels only)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    """Render the follow-up screen."""
    state.init()
    state.note_page("Follow-up")
    st.title("Follow-up")
    st.markdown("Compare two visits of **the same lesion**: the later photo is aligned onto the earlier one by the "
                "skin around the lesion, then size, border and colour are measured in the same frame.")
    st.markdown(view.CAUTION)
    model = resources.model_sidebar()
    with st.sidebar:
        st.header("Follow-up")
        st.button("Clear follow-up", key="fu_clear", on_click=state.clear_followup, icon=":material/delete_sweep:",
                  help="Forget this screen's uploaded pair and comparisons")
    kept = _choices()  # the source and the worklist pair come back after another page
    source = st.radio("Images", SOURCES, index=None, horizontal=True,
                      key=state.kept_choice(kept, "fu_source", SOURCES[0], SOURCES),
                      on_change=state.keep_choice, args=(kept, "fu_source"))
    if source != SOURCES[0]:
        state.followup()["in_uploader"] = {}  # the uploaders are not drawn: they come back empty, no chip removed
    pair = uploaded_pair() if source == SOURCES[0] else worklist_pair()
    if pair is None:
        st.info("Choose a baseline and a follow-up photo to compare.")
        return
    before, after = pair
    if before.id == after.id:
        st.warning("The two photos are the same file: choose a later photo of the lesion as the follow-up.")
        return
    if model is not None and model.error:
        st.warning(f"The model could not be loaded ({model.error}): the change is measured without risk figures.")
    result = comparison(before, after, model)
    if isinstance(result, str):
        st.error(result)
        return
    if not result.aligned:
        show_not_aligned(result, before, after)
        return
    show_aligned(result)


main()
