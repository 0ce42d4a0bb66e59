"""Privacy: sessions never see each other's images, Grad-CAMs or exports; an upload leaves nothing on
disk; exports carry no EXIF (camera, GPS) of the uploaded file.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.app.conftest import image_bytes, new_app, session_uploads, upload
from tests.conftest import REPO_ROOT, download_file

EXIF_STRINGS = (b"SecretCamMaker", b"PatientPhone", b"Exif\x00\x00", b"eXIf")


def _session_bytes(at) -> list[bytes]:
    """Every upload's bytes and cached Grad-CAM arrays held by an AppTest session."""
    held = []
    for item in session_uploads(at).values():
        held.append(item.data)
        held.extend(cam.tobytes() for cam in item.cams.values() if cam is not None)
    return held


def test_two_sessions_never_share_images_cams_or_exports(app_models, media):
    alice, bob = new_app().run(), new_app().run()
    a_png, b_png = image_bytes(31, size=80), image_bytes(32, size=80)
    upload(alice, ("alice_lesion.png", a_png, "image/png"))
    alice.toggle(key="cam_on").set_value(True).run()
    bob.run()
    assert session_uploads(bob) == {} and not bob.get("download_button")  # nothing of Alice's shows up
    upload(bob, ("bob_lesion.png", b_png, "image/png"))
    bob.toggle(key="cam_on").set_value(True).run()
    bob.radio(key="cam_mode").set_value("Heatmap only").run()
    alice.run()
    assert not alice.exception and not bob.exception
    (a_item,), (b_item,) = session_uploads(alice).values(), session_uploads(bob).values()
    assert a_item.name == "alice_lesion.png" and b_item.name == "bob_lesion.png"
    assert a_item.cams and b_item.cams  # each computed its own Grad-CAM
    assert a_png not in _session_bytes(bob) and b_png not in _session_bytes(alice)
    assert alice.session_state["cam_mode"] == "Overlay"  # a widget change in one session stays there
    alice_csv = download_file(alice, media, "export_csv").content.decode("utf-8")  # media[-1]: the last run's
    bob.run()
    bob_csv = download_file(bob, media, "export_csv").content.decode("utf-8")
    assert "bob_lesion.png" in bob_csv and "alice_lesion.png" not in bob_csv
    assert download_file(bob, media, "export_png").filename == "bob_lesion_dermalens_report.png"
    assert "alice_lesion.png" in alice_csv and "bob_lesion.png" not in alice_csv
    # Clearing one session leaves the other intact.
    bob.button(key="clear_session").click().run()
    alice.run()
    assert session_uploads(bob) == {} and [u.name for u in session_uploads(alice).values()] == ["alice_lesion.png"]


def _snapshot_roots() -> list[Path]:
    roots = {Path(tempfile.gettempdir()), REPO_ROOT, Path.home()}
    return [r for r in roots if r.is_dir()]


def _files_changed_since(t0: float) -> list[Path]:
    """Files under the temp folder, the repo and HOME created or modified at or after ``t0``."""
    skip = {".venv", ".git", "node_modules", "__pycache__", "proc"}
    changed = []
    for root in _snapshot_roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if max(st.st_mtime, st.st_ctime) >= t0 and path.is_file():
                    changed.append(path)
    return changed


def test_an_upload_leaves_nothing_on_disk(app_models, media, tmp_path):
    """Upload, predict, Grad-CAM in every mode, build the exports: no new file holds the image or its name."""
    probe = f"privacy_probe_{uuid.uuid4().hex}"
    data = image_bytes(33, "JPEG", size=96, exif=True)
    signature = data[len(data) // 2: len(data) // 2 + 64]  # 64 bytes only this upload has
    at = new_app().run()
    time.sleep(0.05)
    t0 = time.time() - 0.01
    upload(at, (f"{probe}.jpg", data, "image/jpeg"))
    at.toggle(key="cam_on").set_value(True).run()
    for mode in ("Side by side", "Heatmap only", "Overlay"):
        at.radio(key="cam_mode").set_value(mode).run()
    at.selectbox(key="cam_target").set_value("thickness").run()
    for key in ("export_csv", "export_png", "export_pdf"):
        assert download_file(at, media, key).content  # built in memory, on request
    assert not at.exception and next(iter(session_uploads(at).values())).cams
    leaks = []
    for path in _files_changed_since(t0):
        if probe in str(path):
            leaks.append(path)
            continue
        try:
            if path.stat().st_size > 64 * 1024 * 1024:
                continue
            content = path.read_bytes()
        except OSError:
            continue
        if signature in content or probe.encode() in content:
            leaks.append(path)
    assert leaks == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exports_carry_no_exif_of_the_upload(app_models, media, fmt):
    data = image_bytes(34, fmt, size=96, exif=True)
    assert Image.open(io.BytesIO(data)).getexif().get(0x010F) == "SecretCamMaker"  # the upload has EXIF + GPS
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)
    at = new_app().run()
    upload(at, (f"exif.{fmt.lower()}", data, f"image/{fmt.lower()}"))
    at.toggle(key="cam_on").set_value(True).run()  # the report then embeds the overlay too
    assert not at.exception
    png = download_file(at, media, "export_png").content
    report = Image.open(io.BytesIO(png))
    assert not report.getexif() and "exif" not in report.info
    pdf = download_file(at, media, "export_pdf").content
    table = download_file(at, media, "export_csv").content
    for blob in (png, pdf, table):
        assert not any(s in blob for s in EXIF_STRINGS)
