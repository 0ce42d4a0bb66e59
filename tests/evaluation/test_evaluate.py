"""scripts/evaluate.py on a tiny trained checkpoint: report files, metrics, calibration, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.splits import read_splits
from backend.errors import DataFormatError
from backend.evaluation.evaluate import evaluate
from backend.evaluation.isic_format import ISIC_COLUMNS
from backend.evaluation.split_eval import row_metadata
from backend.inference.predictor import Predictor
from backend.metrics.calibration import apply_temperature, expected_calibration_error, fit_temperature
from backend.metrics.scores import compute_metrics
from backend.training.run import fit
from scripts.evaluate import main as evaluate_main
from tests.conftest import write_synthetic_dataset
from tests.training.test_run import tiny_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    csv = write_synthetic_dataset(root / "data", n=48, size=40)
    result = fit(tiny_cfg(csv, root / "runs", trainer={"epochs": 1}), test=False)
    return csv, result


def test_evaluate_writes_every_report_and_consistent_metrics(trained, tmp_path):
    csv, run = trained
    result = evaluate(run.best_ckpt, csv, tmp_path / "out", split="test")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"metrics.csv", "predictions_isic.csv", "predictions.csv", "confusion_matrix.png", "roc_curves.png",
            "thickness.png"} <= names
    isic = pd.read_csv(tmp_path / "out" / "predictions_isic.csv")
    assert list(isic.columns) == list(ISIC_COLUMNS)
    table = load_table(csv)
    test_rows = table[read_splits(run.run_dir / "splits.csv", table) == "test"]
    assert sorted(isic["image"]) == sorted(test_rows["image_id"])
    # The metrics are exactly what compute_metrics gives on the written predictions.
    detail = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("image").loc[test_rows["image_id"]]
    targets = encode_targets(test_rows)
    probs = detail[list(ISIC_COLUMNS[1:9])].to_numpy()
    again = compute_metrics(targets["diagnosis"], probs, y_true_malignant=targets["label"])
    assert result.metrics["balanced_accuracy"] == pytest.approx(again["balanced_accuracy"])
    assert np.allclose(detail["malignant"], probs[:, [0, 2, 7]].sum(axis=1), atol=1e-6)
    frame = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert {"balanced_accuracy", "auroc_malignant", "f1_macro"} <= set(frame["metric"])


def split_logits(ckpt, csv, splits_csv, split):
    """The checkpoint's own diagnosis logits and labels on one split, straight from the predictor."""
    table = load_table(csv)
    rows = table[read_splits(splits_csv, table).reindex(table.index) == split].reset_index(drop=True)
    raw, kept, skipped = Predictor.from_checkpoint(ckpt, engine="torch").raw_outputs(
        rows["image"].tolist(), row_metadata(rows))
    assert not skipped
    return rows.iloc[kept].reset_index(drop=True), raw.logits, encode_targets(rows.iloc[kept])["diagnosis"]


def test_calibration_is_fitted_on_val_and_reported(trained, tmp_path):
    csv, run = trained
    result = evaluate(run.best_ckpt, csv, tmp_path, split="test", calibrate_split="val")
    assert {"ece_before_calibration", "ece_after_calibration"} <= set(result.metrics)
    # The temperature is the one fitted on the validation rows, not on the reported test rows.
    _, val_logits, val_y = split_logits(run.best_ckpt, csv, run.run_dir / "splits.csv", "val")
    rows, test_logits, y = split_logits(run.best_ckpt, csv, run.run_dir / "splits.csv", "test")
    on_val, on_test = fit_temperature(val_logits, val_y), fit_temperature(test_logits, y)
    assert abs(on_val - on_test) > 0.05 * on_val  # the two splits give distinguishable temperatures
    assert result.temperature == pytest.approx(on_val, rel=1e-3)
    assert result.metrics["temperature"] == pytest.approx(on_val, rel=1e-3)
    detail = pd.read_csv(tmp_path / "predictions.csv").set_index("image").loc[rows["image_id"]]
    known = y >= 0
    probs = detail[list(ISIC_COLUMNS[1:9])].to_numpy()
    # The reported test probabilities are the test logits at the validation temperature.
    np.testing.assert_allclose(probs, apply_temperature(test_logits, on_val), atol=1e-5)
    assert result.metrics["ece_after_calibration"] == pytest.approx(
        expected_calibration_error(apply_temperature(test_logits, on_val)[known], y[known]), abs=1e-4)
    assert result.metrics["ece_before_calibration"] == pytest.approx(
        expected_calibration_error(apply_temperature(test_logits, 1.0)[known], y[known]), abs=1e-4)
    plain = evaluate(run.best_ckpt, csv, tmp_path / "plain", split="test", calibrate_split=None)
    assert plain.temperature is None and "ece_after_calibration" not in plain.metrics


def test_unreadable_test_image_is_left_out_not_replaced(trained, tmp_path, caplog):
    import shutil

    csv, run = trained
    data = tmp_path / "data"
    shutil.copytree(csv.parent, data)
    table = load_table(csv)
    test_rows = table[read_splits(run.run_dir / "splits.csv", table) == "test"]
    broken = test_rows["image_id"].iloc[0]
    (data / "images" / f"{broken}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with caplog.at_level("WARNING"):
        evaluate(run.best_ckpt, data / csv.name, tmp_path / "out", split="test", calibrate_split=None,
                 splits_csv=run.run_dir / "splits.csv")
    isic = pd.read_csv(tmp_path / "out" / "predictions_isic.csv")
    assert sorted(isic["image"]) == sorted(set(test_rows["image_id"]) - {broken})
    assert f"1 of {len(test_rows)} rows left out" in caplog.text and broken in caplog.text
    # The other rows' predictions are those of a full run.
    full = evaluate(run.best_ckpt, csv, tmp_path / "full", split="test", calibrate_split=None)
    both = pd.read_csv(tmp_path / "full" / "predictions_isic.csv").merge(isic, on="image", suffixes=("", "_cut"))
    assert len(both) == len(isic) and np.allclose(both["MEL"], both["MEL_cut"], atol=1e-6)
    assert full.temperature is None


def test_cli_prints_metrics_and_reports_errors(trained, tmp_path, capsys):
    csv, run = trained
    assert evaluate_main(["--checkpoint", str(run.best_ckpt), "--csv", str(csv), "--output_dir", str(tmp_path),
                          "--split", "val", "--calibrate_split", "none"]) == 0
    assert "balanced_accuracy" in capsys.readouterr().out
    assert evaluate_main(["--checkpoint", str(tmp_path / "nope.ckpt"), "--csv", str(csv)]) == 2
    assert "nope.ckpt" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(run.best_ckpt), "--csv", str(csv), "--split", "holdout",
                          "--output_dir", str(tmp_path)]) == 2
    assert "holdout" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(run.best_ckpt), "--csv", str(csv), "--threshold", "2",
                          "--output_dir", str(tmp_path / "t")]) == 2
    assert "--threshold is a probability of malignancy and must be between 0 and 1, got 2.0" in (
        capsys.readouterr().err)
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_an_external_table_is_evaluated_without_the_runs_calibration(trained, tmp_path, caplog):
    csv, run = trained
    # Another clinic's images: none of them is in the run's splits.csv beside the checkpoint.
    external = write_synthetic_dataset(tmp_path / "ext", n=16, size=40, seed=3)
    frame = pd.read_csv(external)
    frame["image"] = "EXT_" + frame["image"]
    for name in frame["image"]:
        (tmp_path / "ext" / "images" / name.removeprefix("EXT_")).rename(tmp_path / "ext" / "images" / name)
    # ... and one image the run trained on (another clinic's set may share a few with the training table).
    shared = pd.read_csv(csv).iloc[:1]
    shutil.copy(csv.parent / "images" / shared["image"].iat[0], tmp_path / "ext" / "images")
    pd.concat([frame, shared], ignore_index=True).to_csv(external, index=False)
    with caplog.at_level("WARNING", logger="backend.evaluation.evaluate"):
        result = evaluate(run.best_ckpt, external, tmp_path / "out", calibrate_split="val")
    assert result.temperature is None and len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == 17
    assert "names images that are not in" in caplog.text and "--calibrate_split none" in caplog.text
    assert "1 of the 17 images" in caplog.text and "their figures are not external" in caplog.text
    # The run's own table with a broken split file is an error, not an "external table".
    broken = tmp_path / "run" / "splits.csv"
    (tmp_path / "run" / "ckpts").mkdir(parents=True)
    shutil.copy(run.best_ckpt, tmp_path / "run" / "ckpts" / "best.ckpt")
    frame = pd.read_csv(run.run_dir / "splits.csv")
    frame.loc[0, "split"] = "tset"
    frame.to_csv(broken, index=False)
    with pytest.raises(DataFormatError, match="tset"):
        evaluate(tmp_path / "run" / "ckpts" / "best.ckpt", csv, tmp_path / "out3", calibrate_split="val")
    # An explicit split of the external table still needs a split file that fits it: refused by name.
    with pytest.raises(DataFormatError, match="not in the lesion table"):
        evaluate(run.best_ckpt, external, tmp_path / "out2", split="test")
