"""Our ISIC-format CSVs and metrics against the official ``isic-challenge-scoring`` package."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.data.schema import ALL_DIAGNOSES, DIAGNOSES
from backend.errors import DataFormatError
from backend.evaluation.isic_format import (
    ISIC_COLUMNS,
    predictions_frame,
    read_predictions_csv,
    truth_frame,
    write_predictions_csv,
    write_truth_csv,
)
from backend.metrics.scores import compute_metrics

# isic-challenge-scoring 5.6.0 uses pandas APIs that pandas 3 deprecates (inplace=, verify_integrity=).
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


def synthetic_split(rng: np.random.Generator, n: int, codes: tuple[str, ...], n_cols: int):
    """Image ids, diagnosis codes (every code present) and informative probabilities over n_cols columns."""
    diagnoses = [codes[i % len(codes)] for i in range(n)]
    rng.shuffle(diagnoses)
    y = np.array([ALL_DIAGNOSES.index(d) for d in diagnoses])
    logits = rng.normal(0, 1.0, (n, n_cols))
    informative = y < n_cols
    logits[np.flatnonzero(informative), y[informative]] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = [f"ISIC_{9000000 + i:07d}" for i in range(n)]
    return ids, diagnoses, y, probs


@pytest.fixture
def isic():
    """The official scorer; its CSV parser calls ``DataFrame.applymap``, removed in pandas 3 (alias to ``map``)."""
    scoring = pytest.importorskip(
        "isic_challenge_scoring.classification",
        reason="isic-challenge-scoring (dev requirement) is not installed: `pip install -r requirements-dev.txt`",
    )
    with pytest.MonkeyPatch.context() as mp:
        if not hasattr(pd.DataFrame, "applymap"):
            mp.setattr(pd.DataFrame, "applymap", pd.DataFrame.map, raising=False)
        yield scoring


def test_nine_class_scores_match_official_scorer(isic, tmp_path):
    rng = np.random.default_rng(0)
    ids, diagnoses, y, probs = synthetic_split(rng, 180, ALL_DIAGNOSES, n_cols=9)
    truth = write_truth_csv(tmp_path / "truth.csv", ids, diagnoses)
    pred = write_predictions_csv(tmp_path / "pred.csv", [f"/images/{i}.jpg" for i in ids], probs)

    official = isic.ClassificationScore.from_file(truth, pred, isic.ClassificationMetric.BALANCED_ACCURACY)
    read_back = read_predictions_csv(pred)
    ours = compute_metrics(y, read_back[list(ALL_DIAGNOSES)].to_numpy(), class_names=ALL_DIAGNOSES)

    assert ours["balanced_accuracy"] == pytest.approx(official.aggregate["balanced_accuracy"], abs=1e-12)
    assert ours["balanced_accuracy"] == pytest.approx(official.overall, abs=1e-12)
    for name in ALL_DIAGNOSES:
        assert ours[f"auroc/{name}"] == pytest.approx(official.per_category.loc[name, "auc"], abs=1e-12), name
    assert ours["auroc_macro"] == pytest.approx(official.macro_average["auc"], abs=1e-12)


def test_eight_class_model_matches_official_on_truth_without_unk(isic, tmp_path):
    rng = np.random.default_rng(1)
    ids, diagnoses, y, probs = synthetic_split(rng, 160, DIAGNOSES, n_cols=8)
    # An eight-column truth (no UNK category), as for a split without UNK images.
    truth_path = tmp_path / "truth8.csv"
    truth_frame(ids, diagnoses).drop(columns="UNK").to_csv(truth_path, index=False)
    pred_path = write_predictions_csv(tmp_path / "pred.csv", ids, probs)

    from isic_challenge_scoring.load_csv import parse_truth_csv, sort_rows

    with truth_path.open() as stream:
        truth_probs, truth_weights = parse_truth_csv(stream)
    pred_probs = read_predictions_csv(pred_path).set_index("image")[list(truth_probs.columns)]
    sort_rows(truth_probs)
    sort_rows(pred_probs)
    official = isic.ClassificationScore(truth_probs, pred_probs, truth_weights, isic.ClassificationMetric.AUC)

    ours = compute_metrics(y, probs)
    assert ours["balanced_accuracy"] == pytest.approx(official.aggregate["balanced_accuracy"], abs=1e-12)
    assert ours["auroc_macro"] == pytest.approx(official.overall, abs=1e-12)
    for name in DIAGNOSES:
        assert ours[f"auroc/{name}"] == pytest.approx(official.per_category.loc[name, "auc"], abs=1e-12), name


def test_unk_truth_rows_cost_an_eight_class_model_one_ninth(isic, tmp_path):
    """UNK rows are skipped by our diagnosis metrics; the official scorer counts UNK recall (0 here)."""
    rng = np.random.default_rng(2)
    ids, diagnoses, y, probs = synthetic_split(rng, 180, ALL_DIAGNOSES, n_cols=8)
    truth = write_truth_csv(tmp_path / "truth.csv", ids, diagnoses)
    pred = write_predictions_csv(tmp_path / "pred.csv", ids, probs)  # UNK column = 0
    official = isic.ClassificationScore.from_file(truth, pred, isic.ClassificationMetric.BALANCED_ACCURACY)
    ours = compute_metrics(np.where(y == 8, -1, y), probs)
    assert ours["n_diagnosis"] == int((y < 8).sum())
    assert official.overall == pytest.approx(8 / 9 * ours["balanced_accuracy"], abs=1e-12)


# --------------------------------------------------------------------------- format only (no scorer needed)


def test_round_trip_and_columns(tmp_path):
    probs = np.array([[0.7, 0.1, 0.05, 0.05, 0.05, 0.02, 0.02, 0.01], [0.0] * 7 + [1.0]])
    path = write_predictions_csv(tmp_path / "p.csv", ["/a/ISIC_1.jpg", "ISIC_2"], probs, unk_prob=[0.3, 0.0])
    assert path.read_text().splitlines()[0] == ",".join(ISIC_COLUMNS)
    back = read_predictions_csv(path)
    assert list(back.columns) == list(ISIC_COLUMNS)
    assert back["image"].tolist() == ["ISIC_1", "ISIC_2"]
    np.testing.assert_array_equal(back[list(DIAGNOSES)].to_numpy(), probs)
    assert back["UNK"].tolist() == [0.3, 0.0]


def test_nine_column_probs_and_truth_one_hot():
    frame = predictions_frame(["x"], np.full((1, 9), 1 / 9))
    assert frame.loc[0, "UNK"] == pytest.approx(1 / 9)
    truth = truth_frame(["a.jpg", "b"], ["UNK", "SCC"])
    assert truth.loc[0, "UNK"] == 1.0 and truth.loc[1, "SCC"] == 1.0 and truth.iloc[:, 1:].to_numpy().sum() == 2
    with pytest.raises(ValueError, match="unknown diagnosis 'XYZ'"):
        truth_frame(["a"], ["XYZ"])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        predictions_frame(["a"], np.full((1, 8), 1.5))
    with pytest.raises(ValueError, match="duplicate image id 'a'"):
        predictions_frame(["a.jpg", "a"], np.full((2, 8), 0.1))


def test_missing_unk_column_is_filled_with_zero(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("image," + ",".join(DIAGNOSES) + "\nISIC_1," + ",".join(["0.125"] * 8) + "\n")
    assert read_predictions_csv(path)["UNK"].tolist() == [0.0]


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        ("ISIC_1," + ",".join(["0.1"] * 9) + "\nISIC_1," + ",".join(["0.1"] * 9), 3, "image", "duplicate image id"),
        ("ISIC_1," + ",".join(["0.1"] * 8) + ",1.5", 2, "UNK", "got '1.5'"),
        ("ISIC_1,abc," + ",".join(["0.1"] * 8), 2, "MEL", "got 'abc'"),
        ("ISIC_1,," + ",".join(["0.1"] * 8), 2, "MEL", "got empty"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, body, line, field, message):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(ISIC_COLUMNS) + "\n" + body + "\n")
    with pytest.raises(DataFormatError, match=message) as err:
        read_predictions_csv(path)
    assert err.value.line == line and err.value.field == field and err.value.path == str(path)


def test_bad_header(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image,MEL,NV\nISIC_1,0.5,0.5\n")
    with pytest.raises(DataFormatError, match="missing column\\(s\\) BCC") as err:
        read_predictions_csv(path)
    assert err.value.line == 1
    path.write_text(",".join(ISIC_COLUMNS) + ",extra\nISIC_1," + ",".join(["0.1"] * 9) + ",1\n")
    with pytest.raises(DataFormatError, match="unexpected column") as err:
        read_predictions_csv(path)
    assert err.value.field == "extra"
    with pytest.raises(DataFormatError, match="not found"):
        read_predictions_csv(tmp_path / "missing.csv")
