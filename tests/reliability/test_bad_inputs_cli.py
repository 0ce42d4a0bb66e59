"""The bad-input corpus through ``scripts/predict.py`` and ``scripts/train.py`` (their ``main(argv)``).

predict: one run over a folder mixing every image case with good lesions; per case, a loadable file
gets a prediction row and a bad one a ``skipped: <file>: <reason>`` line on stderr, and the run
exits 0 (the script's contract: skipped files never stop it). A label CSV it cannot read is exit 2.

train: each bad label CSV is exit code 2 with ``error: <file>, line N, field 'F': ...``; a dataset
with corrupt images among good ones still trains, reporting each unreadable file once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from backend.inference.predictor import OUTPUT_COLUMNS
from scripts.predict import main as predict_main
from scripts.train import main as train_main
from tests.conftest import REPO_ROOT, write_synthetic_dataset
from tests.reliability.corpus import CsvCase, ImageCase, csv_cases, image_cases, lesion, write_images_for_csv

# Tiny CPU models run on one torch thread (see ``one_torch_thread`` in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_CASES = image_cases()
BAD_CSV_CASES = [c for c in csv_cases() if not c.loads]
GOOD_NAMES = ("good_0.png", "good_1.jpg")
TINY_CONFIG = str(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")


# ------------------------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def predict_run(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``predict`` run over a folder holding every image case plus two good lesions."""
    root = tmp_path_factory.mktemp("predict")
    folder = root / "images"
    folder.mkdir()
    for case in IMAGE_CASES:
        (folder / case.filename).write_bytes(case.data)
    lesion(20).save(folder / GOOD_NAMES[0])
    lesion(21).save(folder / GOOD_NAMES[1], quality=90)
    output = root / "preds.csv"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = predict_main(["--input", str(folder), "--output", str(output), "--checkpoint", str(untrained_bundle),
                             "--batch_size", "8"])
    with open(output, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"code": code, "stderr": stderr.getvalue(), "rows": {r["image"]: r for r in rows}, "folder": folder,
            "header": list(rows[0]) if rows else []}


def test_predict_mixed_folder_exits_0_with_a_summary(predict_run):
    n_bad = sum(not c.loads for c in IMAGE_CASES)
    n_good = len(IMAGE_CASES) - n_bad + len(GOOD_NAMES)
    assert predict_run["code"] == 0, predict_run["stderr"][-2000:]
    assert f"{n_good} predicted, 0 already in" in predict_run["stderr"]
    assert f"{n_bad} skipped" in predict_run["stderr"]
    assert predict_run["header"] == list(OUTPUT_COLUMNS)
    assert sorted(predict_run["rows"]) == sorted([c.filename for c in IMAGE_CASES if c.loads] + list(GOOD_NAMES))


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_predict_per_file_outcome(predict_run, case: ImageCase):
    path = predict_run["folder"] / case.filename
    lines = re.split(r"[\r\n]", predict_run["stderr"])  # the progress bar redraws with carriage returns
    skipped = [line for line in lines if line.startswith(f"skipped: {path}: ")]
    if case.loads:
        assert not skipped, skipped
        row = predict_run["rows"][case.filename]
        probs = [float(row[c]) for c in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        # A flagged image is not assessable: grey, never a confident colour; the model's own light is kept.
        assert row["traffic_light"] == ("grey" if row["flags"] else row["model_light"])
        assert row["model_light"] in ("green", "yellow", "red")
    else:
        assert case.filename not in predict_run["rows"]
        assert len(skipped) == 1 and case.reason in skipped[0], skipped


@pytest.mark.parametrize("case_id", ["zero-byte", "utf-16-with-bom", "missing-image-column", "row-with-extra-field"])
def test_predict_unreadable_input_csv_exits_2_naming_it(case_id, untrained_bundle, tmp_path, capsys):
    case = next(c for c in csv_cases() if c.id == case_id)
    table = tmp_path / "cases.csv"
    table.write_bytes(case.data)
    code = predict_main(["--input", str(table), "--output", str(tmp_path / "p.csv"),
                         "--checkpoint", str(untrained_bundle)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {table}"), err
    expected = {"missing-image-column": "missing required column 'image'"}.get(case_id, case.fragment)
    assert expected in err
    assert not (tmp_path / "p.csv").exists()


# -------------------------------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def train_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images_for_csv(tmp_path_factory.mktemp("train_csv"))


@pytest.mark.parametrize("case", BAD_CSV_CASES, ids=[c.id for c in BAD_CSV_CASES])
def test_train_bad_label_csv_exits_2_naming_file_line_field(case: CsvCase, train_images, tmp_path, capsys):
    table = tmp_path / "labels.csv"
    table.write_bytes(case.data)
    code = train_main(["--config", TINY_CONFIG, "--csv", str(table), "--img_dir", str(train_images),
                       "--log_dir", str(tmp_path / "runs"), "--no_test"])
    err = capsys.readouterr().err
    assert code == 2
    where = str(table) + (f", line {case.line}" if case.line else "") + (f", field '{case.field}'" if case.field
                                                                           else "")
    assert f"error: {where}: " in err, err
    assert case.fragment in err
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_train_with_corrupt_images_among_good_ones_still_trains(tmp_path, capsys):
    csv_path = write_synthetic_dataset(tmp_path / "data", n=24, size=32)
    images = csv_path.parent / "images"
    bad_cases = {c.id: c for c in IMAGE_CASES if not c.loads}
    corrupt = {  # image of the table -> corpus case written over it
        "SYN_0002.png": bad_cases["truncated-png"],
        "SYN_0007.png": bad_cases["zero-byte"],
        "SYN_0011.png": bad_cases["text-named-png"],
        "SYN_0016.png": bad_cases["corrupt-png-pixels"],
        "SYN_0021.png": bad_cases["bomb-header-claims-10-gigapixels"],
    }
    for name, case in corrupt.items():
        (images / name).write_bytes(case.data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = train_main(["--config", TINY_CONFIG, "--csv", str(csv_path), "--img_dir", str(images),
                           "--img_size", "32", "--batch_size", "4", "--max_epochs", "1", "--log_dir",
                           str(tmp_path / "runs"), "--no_test", "trainer.limit_train_batches=1.0",
                           "trainer.limit_val_batches=1.0"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    run = tmp_path / "runs" / "cpu_tiny" / "version_0"
    assert (run / "ckpts" / "last.ckpt").is_file() and "best checkpoint:" in out.out
    reports = [str(w.message) for w in caught if "unreadable image" in str(w.message)]
    assert reports, "no corrupt image was read (and replaced or left out) during training"
    for report in reports:  # each names one corrupt file and why it is unreadable
        name = next((n for n in corrupt if f"{images / n}: " in report), None)
        assert name is not None and corrupt[name].reason in report, report
    named = [n for n in corrupt if any(f"{images / n}: " in r for r in reports)]
    assert len(named) == len(reports), reports  # reported once per file, not once per read
    # Validation reads every row (training may drop the last partial batch): each corrupt val image was reported.
    splits = pd.read_csv(run / "splits.csv")
    val_ids = set(splits.loc[splits["split"] == "val", "image_id"])
    assert {n for n in corrupt if Path(n).stem in val_ids} <= set(named), (val_ids, named)
    for report in reports:  # replaced in training, left out of the figures in validation
        name = next(n for n in corrupt if f"{images / n}: " in report)
        expected = "left out of this split's losses and metrics" if Path(name).stem in val_ids else "skipped"
        assert expected in report, report
