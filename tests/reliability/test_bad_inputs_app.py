"""The bad-input corpus uploaded to the dashboard (Streamlit AppTest), all at once beside good lesions.

Per case: a bad file shows one error that starts with its name and gives the reason, and no card;
a loadable file (odd mode, lying extension, EXIF rotation) becomes a card with a prediction. The
page never raises, and the good uploads keep their results.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.conftest import MIME, card_buttons, new_app, session_uploads, upload
from tests.reliability.conftest import BUNDLE_NAME
from tests.reliability.corpus import ImageCase, encode, image_cases, lesion

# Tiny CPU models run on one torch thread (see ``one_torch_thread`` in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_CASES = image_cases()
GOOD = {"good_lesion.png": encode(lesion(30), "PNG"), "good_lesion.jpg": encode(lesion(31), "JPEG", quality=90)}


def mime(filename: str) -> str:
    """The MIME type a browser would send for the file's extension (not its content)."""
    return MIME["PNG"] if filename.endswith(".png") else MIME["JPEG"]


@pytest.fixture(scope="module")
def app_after_upload(untrained_bundle: Path):
    """The dashboard after one upload of every case plus two good lesions (one AppTest session)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DERMALENS_MODELS_DIR", str(untrained_bundle.parent))
        patch.setenv("DERMALENS_MODEL", str(untrained_bundle))
        at = new_app().run()
        files = [(c.filename, c.data, mime(c.filename)) for c in IMAGE_CASES]
        files += [(name, data, mime(name)) for name, data in GOOD.items()]
        upload(at, *files)
        yield at


def test_page_survives_and_good_uploads_keep_their_results(app_after_upload):
    at = app_after_upload
    assert not at.exception
    uploads = {u.name: u for u in session_uploads(at).values()}
    expected = sorted([c.filename for c in IMAGE_CASES if c.loads] + list(GOOD))
    assert sorted(uploads) == expected
    assert all(u.prediction is not None and u.prediction.image == u.name for u in uploads.values())
    assert all(BUNDLE_NAME in str(u.prediction_key[0]) for u in uploads.values())  # the untrained test bundle
    assert len(card_buttons(at)) == len(expected)
    assert len(at.main.error) == sum(not c.loads for c in IMAGE_CASES)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_upload_per_file_outcome(app_after_upload, case: ImageCase):
    at = app_after_upload
    errors = [str(e.value) for e in at.main.error if str(e.value).startswith(f"{case.filename}: ")]
    uploads = {u.name: u for u in session_uploads(at).values()}
    if case.loads:
        assert not errors, errors
        upload_ = uploads[case.filename]
        assert upload_.prediction is not None and upload_.prediction.image == case.filename
        pred = upload_.prediction  # a flagged image is not assessable: grey, never a confident colour
        assert pred.traffic_light == ("grey" if pred.flags else pred.model_light)
        assert upload_.image.ndim == 3 and upload_.image.shape[2] == 3 and upload_.image.dtype.name == "uint8"
        height, width = case.shape
        assert (upload_.image.shape[0] > upload_.image.shape[1]) == (height > width)  # EXIF rotation kept upright
    else:
        assert case.filename not in uploads
        assert len(errors) == 1 and case.reason in errors[0], errors
