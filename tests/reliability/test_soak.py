"""One session with 20 images: every image gets a result and every interaction completes.

Functional only: the timings of the same interactions are in ``benchmarks/app_responsiveness.py``,
and the memory soak of 500 Grad-CAM predictions in ``benchmarks/soak.py``.
"""

from __future__ import annotations

from tests.app.conftest import card_buttons, image_bytes, new_app, session_uploads, texts, upload

N_IMAGES = 20


def test_twenty_images_in_one_session_all_get_results(app_models):
    at = new_app().run()
    files = [(f"lesion_{i:02d}.{'jpg' if i % 2 else 'png'}", image_bytes(100 + i, "JPEG" if i % 2 else "PNG",
                                                                      size=64 + 8 * (i % 5)),
              "image/jpeg" if i % 2 else "image/png") for i in range(N_IMAGES)]
    upload(at, *files)
    assert not at.exception and not at.main.error
    uploads = list(session_uploads(at).values())
    assert [u.name for u in uploads] == [name for name, _, _ in files]
    assert all(u.prediction is not None and u.prediction.image == u.name for u in uploads)
    assert len(card_buttons(at)) == N_IMAGES and f"Gallery ({N_IMAGES} images)" in texts(at.subheader)

    at.toggle(key="cam_on").set_value(True).run()
    for i in (N_IMAGES - 1, 7, 0):  # select cards far apart
        at.button(key=f"select_{uploads[i].id}").click().run()
        assert not at.exception and f"Viewer: {uploads[i].name}" in texts(at.subheader)
    for mode in ("Side by side", "Heatmap only", "Overlay"):
        at.radio(key="cam_mode").set_value(mode).run()
        assert not at.exception
    at.selectbox(key="cam_target").set_value("thickness").run()
    assert not at.exception
    cams = {u.name: sorted(u.cams) for u in session_uploads(at).values() if u.cams}
    assert set(cams) == {uploads[i].name for i in (N_IMAGES - 1, 7, 0)}  # Grad-CAM only where looked at
    assert "thickness" in cams[uploads[0].name]
    at.button(key=f"remove_{uploads[3].id}").click().run()
    assert not at.exception and len(session_uploads(at)) == N_IMAGES - 1
    assert all(u.prediction is not None for u in session_uploads(at).values())
