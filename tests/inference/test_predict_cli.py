"""scripts/predict.py: folder and CSV input, corrupt files, rerun, exact columns, Grad-CAM overlays."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import backend.model_store
from backend.data.formats import load_table
from backend.data.schema import DIAGNOSES, MALIGNANT_DIAGNOSES, THICKNESS_BANDS
from backend.inference.predictor import OUTPUT_COLUMNS, Predictor
from backend.inference.risk import risk_index
from backend.retrieval.build import build_library
from backend.retrieval.library import ReferenceLibrary
from backend.workflows.export import export_bundle
from scripts.predict import main
from tests.conftest import REPO_ROOT
from tests.inference.tiny import lesions, train_tiny_checkpoint

EXPECTED_COLUMNS = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK", "malignant", "risk",
                    "traffic_light", "model_light", "thickness_mm", "thickness_band", "flags", "quality_reasons"]


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
        assert row[12] in ("green", "yellow", "red") and row[13] == row[12] and float(row[14]) >= 0 and row[15]
    # Rerun: nothing new is predicted; a new image is.
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    assert "0 predicted, 3 already" in capsys.readouterr().err
    Image.fromarray(lesions(1, size=72, seed=9)[0]).save(folder / "case_3.png")
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    assert "1 predicted, 3 already" in capsys.readouterr().err
    _, rows2 = read(out)
    assert [r[0] for r in rows2] == ["case_0.png", "case_1.png", "case_2.png", "case_3.png"]
    assert rows2[:3] == rows


def test_each_rows_risk_light_and_thickness_follow_from_its_own_outputs(ckpt, folder, tmp_path):
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    predictor = Predictor.from_checkpoint(ckpt)
    cfg = predictor.risk  # the weights and thresholds the run used (the checkpoint's, as the CLI loads it)
    again = predictor.predict([folder / row["image"] for row in rows])  # the run's own TTA setting, as the CLI
    assert len(rows) == len(again) == 3
    for row, pred in zip(rows, again, strict=True):
        probs = np.array([float(row[name]) for name in DIAGNOSES])
        risk = float(risk_index(probs, cfg))
        malignant = float(probs[[DIAGNOSES.index(d) for d in MALIGNANT_DIAGNOSES]].sum())
        assert abs(risk - malignant) > 1e-3  # the sample tells the weighted risk from plain P(malignant)
        assert float(row["malignant"]) == pytest.approx(malignant, abs=1e-5)
        assert float(row["risk"]) == pytest.approx(risk, abs=1e-5)
        light = "green" if risk < cfg.green_below else "yellow" if risk < cfg.yellow_below else "red"
        assert row["model_light"] == light
        assert row["traffic_light"] == ("grey" if row["flags"] else light)
        assert float(row["thickness_mm"]) == pytest.approx(pred.thickness_mm, abs=1e-5)
        mm = max(float(row["thickness_mm"]), 0.0)
        assert row["thickness_band"] == next(name for name, lo, hi in THICKNESS_BANDS if lo <= mm < hi)


def test_a_rerun_with_another_model_or_tta_is_refused_not_mixed_in(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    settings = json.loads((tmp_path / "preds.csv.json").read_text())
    assert settings["tta"] is False and len(settings["weights_sha256"]) == 64
    before = out.read_bytes()
    Image.fromarray(lesions(1, size=72, seed=9)[0]).save(folder / "case_3.png")
    capsys.readouterr()
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt), "--tta"]) == 2
    err = capsys.readouterr().err
    assert "was written with other settings" in err and "tta: False then, True now" in err
    bundle = export_bundle(ckpt, tmp_path / "bundle", temperature=2.0).bundle_dir  # another calibration
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "temperature: 1.0 then, 2.0 now" in err and "weights_sha256" in err
    assert out.read_bytes() == before  # nothing appended by a refused run
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0  # same: resumes
    assert "1 predicted, 3 already" in capsys.readouterr().err


def test_an_output_without_rows_takes_this_runs_settings(ckpt, folder, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text(",".join(EXPECTED_COLUMNS) + "\n")  # a run that wrote its header, then died
    (tmp_path / "preds.csv.json").write_text(json.dumps({"model": "another", "tta": True}))
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt)]) == 0
    settings = json.loads((tmp_path / "preds.csv.json").read_text())
    assert settings["tta"] is False and settings["model"] != "another"  # the record of the rows now in it


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


def test_each_overlay_explains_the_class_its_row_reports_under_the_runs_tta(ckpt, folder, tmp_path, monkeypatch):
    asked = []
    explain = Predictor.explain_batch
    monkeypatch.setattr(Predictor, "explain_batch",
                        lambda self, images, target=None, metadata=None: asked.append(target)
                        or explain(self, images, target, metadata))
    out = tmp_path / "p.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt), "--cam_dir",
                 str(tmp_path / "cams"), "--tta"]) == 0  # --tta although the model's card says no TTA
    names = [row[0] for row in read(out)[1]]
    with_tta = Predictor.from_checkpoint(ckpt).predict([folder / n for n in names], tta=True)
    assert [c for batch in asked for c in batch] == [r.top_class for r in with_tta]


def test_a_run_killed_during_grad_cam_leaves_no_row_without_its_overlay(ckpt, folder, tmp_path, monkeypatch):
    out, cams = tmp_path / "p.csv", tmp_path / "cams"
    argv = ["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt), "--cam_dir", str(cams),
            "--batch_size", "1"]
    calls = []
    explain = Predictor.explain_batch

    def killed_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or the machine going down, in the middle of the run
        return explain(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "explain_batch", killed_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    _, rows = read(out)
    assert [r[0] for r in rows] == ["case_0.png"]  # the killed batch has no row...
    assert sorted(p.name.split("_")[1] for p in cams.iterdir()) == ["0"]  # ...and every row its overlay
    monkeypatch.setattr(Predictor, "explain_batch", explain)
    assert main(argv) == 0  # the rerun predicts the rest, overlays included
    assert sorted(p.name.split("_")[1] for p in cams.iterdir()) == ["0", "1", "2"]


def test_tta_follows_the_models_card_unless_asked(ckpt, folder, tmp_path, monkeypatch):
    asked = []
    iterate = Predictor.iter_outputs
    monkeypatch.setattr(Predictor, "iter_outputs", lambda self, *a, **kw: asked.append(kw["tta"]) or
                        iterate(self, *a, **kw))
    for i, flag in enumerate(([], ["--tta"], ["--no-tta"])):
        assert main(["--input", str(folder), "--output", str(tmp_path / f"p{i}.csv"), "--checkpoint", str(ckpt),
                     *flag]) == 0
    assert asked == [None, True, False]  # None: the predictor's own setting, as its card was measured


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


# -- --reference: similar confirmed cases ------------------------------------------------------------

RETRIEVAL_COLUMNS = ["knn_malignant", "knn_diagnosis", "neighbours"]


def _reference(ckpt, folder, root, predictor=None):
    """A library of the folder's 3 cases plus 9 more lesions (every diagnosis), built with ``ckpt``'s model."""

    lines = ["image,diagnosis,label,lesion_id,patient_id"]
    for i, img in enumerate(lesions(9, size=72, seed=5)):
        Image.fromarray(img).save(folder / f"ref_{i}.png")
    names = [f"case_{i}.png" for i in range(3)] + [f"ref_{i}.png" for i in range(9)]
    for i, name in enumerate(names):
        diagnosis = DIAGNOSES[i % len(DIAGNOSES)]
        lines.append(f"{name},{diagnosis},{int(diagnosis in MALIGNANT_DIAGNOSES)},L{i},P{i // 2}")
    (root / "ref.csv").write_text("\n".join(lines) + "\n")
    for i in range(9):  # the library holds them; the folder to predict keeps only case_*.png
        (folder / f"ref_{i}.png").rename(root / f"ref_{i}.png")
    table = load_table(root / "ref.csv", img_dir=folder, check_images=False)
    table["image"] = [str(folder / n) if n.startswith("case") else str(root / n) for n in names]
    predictor = predictor or Predictor.from_checkpoint(ckpt)
    build_library(table, root / "lib", predictor, model_path=str(ckpt), img_dir=folder, progress=False)
    return root / "lib"


def test_reference_adds_neighbour_columns_without_the_image_itself(ckpt, folder, tmp_path, capsys):
    import pandas as pd


    library = _reference(ckpt, folder, tmp_path)
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt), "--reference",
                 str(library), "--k", "4"]) == 0
    header, rows = read(out)
    assert header == EXPECTED_COLUMNS + RETRIEVAL_COLUMNS
    index = ReferenceLibrary.load(library).rows.set_index("image_id")
    assert [r[0] for r in rows] == ["case_0.png", "case_1.png", "case_2.png"]
    for row in rows:
        neighbours = row[-1].split(";")  # image ids: no file names, no folders
        assert len(neighbours) == 4 and row[0].removesuffix(".png") not in neighbours  # its own copy left out
        picked = index.loc[neighbours]
        assert float(row[-3]) == pytest.approx(picked["malignant"].mean(), abs=1e-6)
        counts = picked["diagnosis"].value_counts()
        assert counts[row[-2]] == counts.max()
    # Without --reference the columns stay as they were; mixing the two in one file is refused.
    plain = tmp_path / "plain.csv"
    assert main(["--input", str(folder), "--output", str(plain), "--checkpoint", str(ckpt)]) == 0
    assert read(plain)[0] == EXPECTED_COLUMNS
    capsys.readouterr()
    assert main(["--input", str(folder), "--output", str(plain), "--checkpoint", str(ckpt), "--reference",
                 str(library)]) == 2
    assert "different --reference setting" in capsys.readouterr().err
    assert pd.read_csv(plain).shape == (3, len(EXPECTED_COLUMNS))


def test_reference_csv_lesion_and_patient_ids_are_left_out(ckpt, folder, tmp_path):
    library = _reference(ckpt, folder, tmp_path)
    table = tmp_path / "cases.csv"
    # case_0's library lesion is L0, patient P0 (shared with case_1): with patient P0 neither comes back.
    table.write_text("image,lesion_id,patient_id\ncase_0.png,L0,P0\ncase_2.png,,\n")
    out = tmp_path / "preds.csv"
    assert main(["--input", str(table), "--img_dir", str(folder), "--output", str(out), "--checkpoint", str(ckpt),
                 "--reference", str(library), "--k", "12"]) == 0
    _, rows = read(out)
    first, second = (r[-1].split(";") for r in rows)
    assert "case_0" not in first and "case_1" not in first and len(first) == 10
    assert "case_2" not in second and "case_1" in second and len(second) == 11


def test_reference_built_with_another_model_is_refused(ckpt, folder, tmp_path, capsys):
    from tests.inference.tiny import tiny_predictor

    library = _reference(ckpt, folder, tmp_path, predictor=tiny_predictor())
    out = tmp_path / "preds.csv"
    assert main(["--input", str(folder), "--output", str(out), "--checkpoint", str(ckpt), "--reference",
                 str(library)]) == 2
    err = capsys.readouterr().err
    assert "built with model" in err and "python -m scripts.build_reference" in err and "--rebuild" in err
    assert f"--checkpoint {ckpt}" in err
    assert not out.exists()


def test_a_csv_beside_an_images_folder_and_a_run_with_nothing_predicted(ckpt, folder, tmp_path, capsys):
    # As training reads it: names resolve in images/ beside the CSV (here tmp_path/images).
    table = tmp_path / "cases.csv"
    table.write_text("image\ncase_0.png\ncase_1\n")  # with or without extension (ISIC_0000000), as training
    assert main(["--input", str(table), "--output", str(tmp_path / "p.csv"), "--checkpoint", str(ckpt)]) == 0
    assert [r[0] for r in read(tmp_path / "p.csv")[1]] == ["case_0.png", "case_1"]
    # Not one image could be predicted: exit 1, not a silent success.
    table.write_text("image\nnope_1.png\nnope_2.png\n")
    capsys.readouterr()
    assert main(["--input", str(table), "--output", str(tmp_path / "q.csv"), "--checkpoint", str(ckpt)]) == 1
    assert "none of the 2 images could be predicted" in capsys.readouterr().err
