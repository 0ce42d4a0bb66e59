"""Grouped, stratified splits: determinism, no leakage across lesions/patients, fractions, split CSVs, CLI."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from backend.data.schema import ALL_DIAGNOSES, MALIGNANT_DIAGNOSES, TABLE_COLUMNS
from backend.data.splits import SPLITS, assign_splits, read_splits, split_groups, split_summary, write_splits
from backend.errors import ConfigError, DataFormatError
from scripts.make_splits import main
from tests.data.test_formats import write_images


def synthetic_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A lesion table with skewed classes, multi-image lesions and patients chaining several lesions."""
    rng = np.random.default_rng(seed)
    probs = np.array([0.2, 0.5, 0.06, 0.03, 0.1, 0.03, 0.03, 0.03, 0.02])
    diagnosis = rng.choice(ALL_DIAGNOSES, size=n, p=probs / probs.sum())
    lesion = np.array([f"L{i // 3}" if i % 4 else None for i in range(n)], dtype=object)
    patient = np.array([f"P{i // 10}" if i % 7 == 0 else None for i in range(n)], dtype=object)
    table = pd.DataFrame({c: pd.Series([None] * n, dtype="str") for c in TABLE_COLUMNS})
    table["image_id"] = [f"IMG_{i:05d}" for i in range(n)]
    table["image"] = "/x/" + table["image_id"] + ".jpg"
    table["diagnosis"] = pd.Series(diagnosis, dtype="str")
    table["label"] = table["diagnosis"].isin(MALIGNANT_DIAGNOSES).astype(np.int64)
    table["lesion_id"] = pd.Series(lesion, dtype="str")
    table["patient_id"] = pd.Series(patient, dtype="str")
    return table


def crossing(table: pd.DataFrame, splits: pd.Series, column: str) -> int:
    """How many lesion/patient ids occur in more than one split."""
    known = table[column].notna()
    return int((splits[known].groupby(table.loc[known, column]).nunique() > 1).sum())


def test_split_groups_chain_lesions_through_patients():
    table = pd.DataFrame({
        "lesion_id": ["A", "A", "B", "C", None, None, "D", ""],
        "patient_id": [None, "P1", "P1", "P2", "P2", None, None, None],
    })
    groups = split_groups(table)
    assert groups[0] == groups[1] == groups[2]  # A-A via lesion, A-B via patient P1
    assert groups[3] == groups[4] != groups[0]  # C-P2 chain
    assert len({groups[0], groups[3], groups[5], groups[6], groups[7]}) == 5  # loners are their own group


def test_deterministic_and_seed_dependent():
    table = synthetic_table()
    first = assign_splits(table, seed=3)
    assert first.equals(assign_splits(table, seed=3))
    assert first.index.equals(table.index) and set(first) == set(SPLITS)
    assert (first != assign_splits(table, seed=4)).mean() > 0.1


def test_no_lesion_or_patient_crosses_splits():
    table = synthetic_table()
    splits = assign_splits(table, seed=0)
    assert crossing(table, splits, "lesion_id") == 0 and crossing(table, splits, "patient_id") == 0


def test_fractions_close_overall_and_per_class():
    table = synthetic_table()
    splits = assign_splits(table, val_frac=0.1, test_frac=0.2, seed=1)
    overall = splits.value_counts(normalize=True)
    assert overall["train"] == pytest.approx(0.7, abs=0.01) and overall["test"] == pytest.approx(0.2, abs=0.01)
    by_class = pd.crosstab(table["diagnosis"], splits, normalize="index")
    big = table["diagnosis"].value_counts() > 100
    assert np.allclose(by_class.loc[big[big].index, ["train", "val", "test"]], [0.7, 0.1, 0.2], atol=0.03)


def test_zero_fraction_gives_no_such_split():
    table = synthetic_table(500)
    assert set(assign_splits(table, val_frac=0.0, test_frac=0.2)) == {"train", "test"}
    assert set(assign_splits(table, val_frac=0.2, test_frac=0.0)) == {"train", "val"}
    assert set(assign_splits(table, val_frac=0.0, test_frac=0.0)) == {"train"}


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions(val, test):
    with pytest.raises(ConfigError, match="data.split"):
        assign_splits(synthetic_table(50), val_frac=val, test_frac=test)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_a_seed_the_shuffle_cannot_take_names_its_key(seed):
    with pytest.raises(ConfigError, match=r"data\.split\.seed .*" + re.escape(repr(seed))):
        assign_splits(synthetic_table(50), seed=seed)
    assert assign_splits(synthetic_table(50), seed=np.int64(3)).equals(assign_splits(synthetic_table(50), seed=3))


def test_rows_without_diagnosis_are_stratified_by_label():
    table = synthetic_table(2000)
    table["diagnosis"] = pd.Series([None] * len(table), dtype="str")
    splits = assign_splits(table)
    summary = split_summary(table, splits)
    assert set(summary.index) == {"label=0", "label=1", "all"}
    for stratum in ("label=0", "label=1"):
        assert summary.loc[stratum, "val"] / summary.loc[stratum, "total"] == pytest.approx(0.15, abs=0.03)


def test_split_summary_counts():
    table = synthetic_table(400)
    splits = assign_splits(table)
    summary = split_summary(table, splits)
    assert list(summary.columns) == ["train", "val", "test", "total"]
    assert summary.loc["all", "total"] == 400 and summary["total"].iloc[:-1].sum() == 400
    assert summary.loc["all", "val"] == (splits == "val").sum()
    assert list(summary.index[:2]) == ["MEL", "NV"]


def test_write_read_roundtrip(tmp_path):
    table = synthetic_table(300)
    splits = assign_splits(table)
    path = write_splits(table, splits, tmp_path / "sub" / "splits.csv")
    assert pd.read_csv(path).columns.tolist() == ["image_id", "split", "diagnosis", "lesion_id", "patient_id"]
    back = read_splits(path, table)
    assert back.equals(splits) and back.index.equals(table.index)
    shuffled = table.sample(frac=1.0, random_state=0)
    assert read_splits(path, shuffled).equals(splits.reindex(shuffled.index))


def test_write_rejects_unaligned_splits(tmp_path):
    table = synthetic_table(10)
    with pytest.raises(ValueError, match="no valid split"):
        write_splits(table, pd.Series(["train"] * 9), tmp_path / "s.csv")


@pytest.mark.parametrize(("body", "line", "field", "fragment"), [
    ("IMG_00000,train\nIMG_00001,holdout\n", 3, "split", "unknown split 'holdout'"),
    ("IMG_00000,train\nIMG_00001,val\nIMG_00000,test\n", 4, "image_id", "listed twice, on lines 2 and 4"),
    ("IMG_00000,train\nIMG_00001,val\nIMG_99999,test\n", 4, "image_id", "'IMG_99999' is not in the lesion table"),
    ("IMG_00000,train\n", None, "image_id", "2 of 3 image ids of the lesion table have no split in this file "
                                            "(e.g. 'IMG_00001', 'IMG_00002')"),
], ids=["bad-split", "duplicate", "unknown-id", "missing-ids"])
def test_read_splits_errors(tmp_path, body, line, field, fragment):
    table = synthetic_table(3)
    path = tmp_path / "splits.csv"
    path.write_text("image_id,split\n" + body)
    with pytest.raises(DataFormatError) as info:
        read_splits(path, table)
    err = info.value
    assert "splits.csv" in str(err) and (err.line, err.field) == (line, field) and fragment in str(err)


@pytest.mark.parametrize(("moved", "to", "column", "group"), [
    (("IMG_00002",), "test", "lesion_id", "L0"),  # IMG_00001 and IMG_00002 are one lesion
    (("IMG_00006", "IMG_00007"), "val", "patient_id", "P0"),  # lesion L2, whose IMG_00007 shares patient P0
])
def test_read_splits_refuses_a_lesion_or_patient_in_two_splits(tmp_path, moved, to, column, group):
    table = synthetic_table(12)
    splits = pd.Series("train", index=table.index)
    path = tmp_path / "splits.csv"
    write_splits(table, splits, path)
    assert read_splits(path, table).eq("train").all()
    rows = pd.read_csv(path)
    rows.loc[rows["image_id"].isin(moved), "split"] = to
    rows.to_csv(path, index=False)
    with pytest.raises(DataFormatError) as info:
        read_splits(path, table)
    text = str(info.value)
    assert info.value.field == "split" and f"{column} {group!r} is in two splits" in text
    line = int(rows.index[rows["image_id"] == moved[-1]][0]) + 2
    assert f"image {moved[-1]!r} in {to} (line {line})" in text and "in train (line" in text


def test_read_splits_needs_columns(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_text("image,split\nIMG_00000,train\n")
    with pytest.raises(DataFormatError, match="missing required column 'image_id'; columns found: 'image', 'split'"):
        read_splits(path, synthetic_table(3))


def test_cli_writes_splits_and_reports_errors(tmp_path, capsys):
    names = [f"S_{i:03d}.png" for i in range(60)]
    write_images(tmp_path / "images", names)
    rows = [f"{n},{ALL_DIAGNOSES[i % 9]},,L{i // 2}" for i, n in enumerate(names)]
    (tmp_path / "labels.csv").write_text("image,diagnosis,label,lesion_id\n" + "\n".join(rows) + "\n")
    out = tmp_path / "splits.csv"
    assert main(["--csv", str(tmp_path / "labels.csv"), "--output", str(out), "--val_frac", "0.2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "MEL" in printed and "fractions: train" in printed and out.is_file()
    assert len(pd.read_csv(out)) == 60
    assert main(["--csv", str(tmp_path / "labels.csv"), "--output", str(out), "--val_frac", "0.9"]) == 2
    assert "error: --val_frac + --test_frac must leave images to train on (< 1), got 0.9 + 0.15 = 1.05" in (
        capsys.readouterr().err)  # in the flags' own names, not the config's
    assert main(["--csv", str(tmp_path / "labels.csv"), "--output", str(out), "--test_frac", "-0.1"]) == 2
    assert "error: --test_frac must be a fraction in [0, 1), got -0.1" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("image,label\nS_000.png,5\n")
    assert main(["--csv", str(tmp_path / "bad.csv"), "--output", str(out)]) == 2
    assert "error: " in (err := capsys.readouterr().err) and "line 2, field 'label'" in err
    # An output path the system refuses (here a folder) is one line naming it, not a traceback.
    assert main(["--csv", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "images")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'images'}: Is a directory"


@pytest.mark.integration
def test_real_labels_csv_splits_are_grouped_and_stratified(shared_data):
    from backend.data.formats import load_table

    table = load_table(shared_data / "labels.csv")
    splits = assign_splits(table, val_frac=0.15, test_frac=0.15, seed=42)
    assert crossing(table, splits, "lesion_id") == 0 and crossing(table, splits, "patient_id") == 0
    summary = split_summary(table, splits)
    fractions = summary[["train", "val", "test"]].div(summary["total"], axis=0)
    big = summary["total"] > 100
    assert np.allclose(fractions[big], [0.70, 0.15, 0.15], atol=0.03)
    assert np.allclose(fractions.loc["all"], [0.70, 0.15, 0.15], atol=0.005)
