"""scripts/predict.py: folder and CSV input, corrupt files, rerun, exact columns, Grad-CAM overlays."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest
from PIL import Image

from backend.inference.predictor import OUTPUT_COLUMNS
from scripts.predict import main
from tests.conftest import REPO_ROOT
from tests.inference.tiny import lesions, train_tiny_checkpoint

EXPECTED_COLUMNS = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK", "malignant", "risk",
                    "traffic_light", "thickness_mm", "thickness_band", "flags"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("cli"))[0]


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(lesions(3, size=72, seed=2)):
        Image.fromarray(img).save(images / f"case_{i}.png")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "notes.txt").write_text("not an image, not listed")
    return images


def read(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_folder_with_a_corrupt_file_then_rerun(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    err = capsys.readouterr().err
    assert "corrupt.jpg" in err and "skipped" in err and "3 predicted" in err
    header, rows = read(out)
    assert header == EXPECTED_COLUMNS == list(OUTPUT_COLUMNS)
    assert [r[0] for r in rows] == ["case_0.png", "case_1.png", "case_2.png"]
    for row in rows:
        probs = [float(v) for v in row[1:9]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and float(row[9]) == 0.0
        assert row[12] in ("green", "yellow", "red") and float(row[13]) >= 0 and row[14]
    # Rerun: nothing new is predicted; a new image is.
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    assert "0 predicted, 3 already" in capsys.readouterr().err
    Image.fromarray(lesions(1, size=72, seed=9)[0]).save(folder / "case_3.png")
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    assert "1 predicted, 3 already" in capsys.readouterr().err
    _, rows2 = read(out)
    assert [r[0] for r in rows2] == ["case_0.png", "case_1.png", "case_2.png", "case_3.png"]
    assert rows2[:3] == rows


def test_interrupted_last_line_is_repaired(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    text = out.read_text()
    out.write_text(text + "case_9.png,0.1,0.2")  # a crash in the middle of a row
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    assert out.read_text() == text


def test_csv_with_metadata_relative_paths_and_bad_rows(ckpt, folder, tmp_path, capsys):
    table = tmp_path / "cases.csv"
    table.write_text(
        "image,age_approx,sex,anatom_site_general\n"
        "case_0.png,45,female,posterior torso\n"
        "case_1.png,,,\n"
        f"{folder / 'case_2.png'},70,male,\n"
        "case_1.png,50,male,\n"
        "missing.png,30,male,\n"
        "case_2.png,40,robot,\n"
    )
    out = tmp_path / "out" / "preds.csv"
    assert main(["--input", str(table), "--img_dir", str(folder), "--output", str(out), "--checkpoint", str(ckpt),
                 "--tta"]) == 0
    err = capsys.readouterr().err
    assert "line 5" in err and "listed again" in err  # duplicate image
    assert "missing.png" in err and "file not found" in err
    assert "line 7" in err and "robot" in err
    header, rows = read(out)
    assert header == EXPECTED_COLUMNS
    assert [r[0] for r in rows] == ["case_0.png", "case_1.png", str(folder / "case_2.png")]


def test_cam_dir_writes_overlays(ckpt, folder, tmp_path):
    cams = tmp_path / "cams"
    assert main(["--input", str(folder), "--output", str(tmp_path / "p.csv"), "--checkpoint", str(ckpt),
                 "--cam_dir", str(cams), "--opacity", "0.5"]) == 0
    files = sorted(p.name for p in cams.iterdir())
    stems = [re.fullmatch(r"(case_\d)_[0-9a-f]{8}_cam\.png", f).group(1) for f in files]
    assert stems == ["case_0", "case_1", "case_2"]
    with Image.open(cams / files[0]) as im:
        assert im.size == (72, 72) and im.mode == "RGB"


def test_bad_inputs_exit_2(ckpt, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.png\n")
    assert main(["--input", str(bad), "--output", str(tmp_path / "p.csv"), "--checkpoint", str(ckpt)]) == 2
    assert "missing required column 'image'" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "nope"), "--checkpoint", str(ckpt)]) == 2
    assert "no such folder" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["--input", str(tmp_path), "--output", str(other), "--checkpoint", str(ckpt)]) == 2
    assert "not a predictions file" in capsys.readouterr().err
    import backend.model_store

    monkeypatch.setattr(backend.model_store, "DEFAULT_MODEL_DIR", tmp_path / "no_model")
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "q.csv")]) == 2
    assert "no default model" in capsys.readouterr().err


def test_module_entry_point_help_is_light():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, scripts.predict as p; p.build_parser(); print('torch' in sys.modules)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "False"
    proc = subprocess.run([sys.executable, "-m", "scripts.predict", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--cam_dir" in proc.stdout and "--tta" in proc.stdout
