import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

import backend.model_store as store

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def test_app_starts_and_reports_model_status():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "DermaLens"
    messages = [m.value for m in (*at.success, *at.warning)]
    assert len(messages) == 1
    assert messages[0].startswith(("Loaded model:", "No model loaded:"))


def test_model_dir_status(tmp_path):
    assert not store.describe_model_dir(tmp_path / "nope").available
    (tmp_path / store.WEIGHTS_FILE).write_bytes(b"")
    status = store.describe_model_dir(tmp_path)
    assert not status.available and "model_card.json" in status.reason
    (tmp_path / store.CARD_FILE).write_text("{not json")
    assert "not valid JSON" in store.describe_model_dir(tmp_path).reason
    (tmp_path / store.CARD_FILE).write_text(json.dumps({"name": "tiny"}))
    status = store.describe_model_dir(tmp_path)
    assert status.available and status.name == "tiny"
