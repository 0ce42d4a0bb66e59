"""``scripts/compare_visits.py``: change.json with the required keys, EXIF-free pictures, clear failures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from backend.followup.synthetic import FollowUpParams, make_follow_up
from scripts.compare_visits import main
from tests.followup.conftest import lesion_photo, png_file

REQUIRED = ("aligned", "area_change", "diameter_change", "risk_before", "risk_after", "flags")


@pytest.fixture
def pair(tmp_path):
    """Baseline (with EXIF camera and GPS data) and a grown, moved follow-up as PNG files."""
    before, truth = lesion_photo(20, size=160)
    synthetic = make_follow_up(before, FollowUpParams(angle_deg=15, zoom=1.1, growth=1.25), truth, seed=20)
    return (png_file(tmp_path / "visit1.png", before, exif=True), png_file(tmp_path / "visit2.png", synthetic.image),
            synthetic.true_area_change)


def test_writes_change_json_and_pictures_without_exif(pair, tmp_path, capsys):
    before, after, truth = pair
    out = tmp_path / "out"
    assert main(["--before", str(before), "--after", str(after), "--output", str(out), "--no-model"]) == 0
    data = json.loads((out / "change.json").read_text())
    assert all(key in data for key in REQUIRED)
    assert data["aligned"] is True and abs(data["area_change"] - truth) <= 0.10
    assert data["risk_before"] is None and data["risk_after"] is None  # --no-model
    assert (data["before"], data["after"]) == ("visit1.png", "visit2.png")  # no folder (names a patient, often)
    assert str(tmp_path) not in (out / "change.json").read_text()
    assert any(f.startswith("lesion grew by") for f in data["flags"])
    for name in ("comparison.png", "change_map.png"):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and picture.width > 160
            assert not picture.getexif() and "exif" not in picture.info
            assert b"SecretCamMaker" not in (out / name).read_bytes()
    assert "lesion grew by" in capsys.readouterr().err


def test_unrelated_pair_is_aligned_false_with_exit_code_0(tmp_path, capsys):
    first = png_file(tmp_path / "a.png", lesion_photo(21, size=160)[0])
    second = png_file(tmp_path / "b.png", lesion_photo(22, size=160)[0])
    out = tmp_path / "out"
    (out).mkdir()
    (out / "comparison.png").write_bytes(b"stale picture of an earlier run")
    assert main(["--before", str(first), "--after", str(second), "--output", str(out), "--no-model"]) == 0
    data = json.loads((out / "change.json").read_text())
    assert data["aligned"] is False and data["area_change"] is None
    assert data["flags"][0].startswith("could not align")
    assert not (out / "comparison.png").exists() and not (out / "change_map.png").exists()
    assert "could not align" in capsys.readouterr().err


def test_unreadable_file_exits_non_zero_naming_it(pair, tmp_path, capsys):
    before, _, _ = pair
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["--before", str(before), "--after", str(broken), "--output", str(tmp_path / "o"), "--no-model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and err.startswith("error:")
    assert main(["--before", str(tmp_path / "missing.png"), "--after", str(before), "--output",
                 str(tmp_path / "o"), "--no-model"]) == 2
    assert "missing.png: file not found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "change.json").exists()


def test_model_risk_of_both_visits(pair, tmp_path, tiny_models):
    before, after, _ = pair
    out = tmp_path / "out"
    assert main(["--before", str(before), "--after", str(after), "--output", str(out),
                 "--model", str(tiny_models.image_only)]) == 0
    data = json.loads((out / "change.json").read_text())
    assert 0.0 <= data["risk_before"] <= 1.0 and 0.0 <= data["risk_after"] <= 1.0
    assert data["traffic_light_before"] in ("green", "yellow", "red")
    assert data["embedding_distance"] is not None and data["embedding_distance"] >= 0.0
