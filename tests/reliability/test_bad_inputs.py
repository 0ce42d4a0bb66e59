"""The bad-input corpus through the image loader and the label-table loader.

One test per case (the pytest ids are the case names, so ``pytest -v`` reads as the table of cases):
each bad image is refused with an ``ImageLoadError`` naming the file and the reason, each odd but
valid image decodes to upright RGB uint8 of the right size; each bad label CSV is refused with a
``DataFormatError`` naming the file, line and field, each odd but valid one loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.data.formats import load_table
from backend.data.images import decode_image_bytes, load_image
from backend.data.schema import TABLE_COLUMNS
from backend.errors import DataFormatError, ImageLoadError
from tests.reliability.corpus import (
    CsvCase,
    ImageCase,
    check_rgb,
    csv_cases,
    image_cases,
    write_images_for_csv,
)

IMAGE_CASES = image_cases()
CSV_CASES = csv_cases()


# ----------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_image_file_through_load_image(case: ImageCase, tmp_path: Path):
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    if case.loads:
        check_rgb(load_image(path), case)
        return
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert case.reason in info.value.reason, info.value.reason


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_image_upload_through_decode_image_bytes(case: ImageCase):
    if case.loads:
        check_rgb(decode_image_bytes(case.data, case.filename), case)
        return
    with pytest.raises(ImageLoadError) as info:
        decode_image_bytes(case.data, case.filename)
    assert str(info.value).startswith(f"{case.filename}: ")
    assert case.reason in info.value.reason, info.value.reason


def test_reduced_decoding_keeps_the_corpus_outcomes():
    """With ``target_size`` (the dataset's and the app's path) the same files fail, the same files load."""
    for case in IMAGE_CASES:
        if case.loads:
            out = decode_image_bytes(case.data, case.filename, target_size=16)
            assert out.dtype == np.uint8 and out.shape[2] == 3 and min(out.shape[:2]) >= 16, case.id
        else:
            with pytest.raises(ImageLoadError, match=case.filename):
                decode_image_bytes(case.data, case.filename, target_size=16)


# ------------------------------------------------------------------------------------------------- CSVs


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images every CSV case names (the CSV itself is written per test beside them)."""
    return write_images_for_csv(tmp_path_factory.mktemp("csv_cases"))


def assert_names_where(err: DataFormatError, path: Path, line: int | None, field: str | None) -> None:
    """The error names the file, and the line and field when the case has them (attributes and message)."""
    message = str(err)
    assert err.path == str(path) and message.startswith(str(path)), message
    assert err.line == line, (err.line, message)
    assert err.field == field, (err.field, message)
    if line is not None:
        assert f"line {line}" in message
    if field is not None:
        assert f"field '{field}'" in message


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.id for c in CSV_CASES])
def test_label_csv_through_load_table(case: CsvCase, images_dir: Path, tmp_path: Path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(case.data)
    if case.loads:
        table = load_table(csv, img_dir=images_dir)
        assert list(table.columns) == list(TABLE_COLUMNS)
        assert len(table) == case.rows
        assert table["image_id"].tolist() == ["a1", "a2", "a3", "a4"]
        assert table["label"].tolist() == [1, 0, 1, 1]
        assert table["diagnosis"].tolist() == ["MEL", "NV", "BCC", "MEL"]
        assert table["thickness_lo_mm"].iloc[0] == table["thickness_hi_mm"].iloc[0] == pytest.approx(0.8)
        assert (table["thickness_lo_mm"].iloc[3], table["thickness_hi_mm"].iloc[3]) == (0.76, 1.5)
        assert all(Path(p).is_file() for p in table["image"])
        return
    with pytest.raises(DataFormatError) as info:
        load_table(csv, img_dir=images_dir)
    assert case.fragment in str(info.value), str(info.value)
    assert_names_where(info.value, csv, case.line, case.field)


# Per format: the file with one required column left out, loaded with its format named explicitly.
MISSING_COLUMNS = {
    "generic-without-image": ("generic", "labels.csv", "label,diagnosis\n1,MEL\n", "image"),
    "isic2019-without-MEL": ("isic2019", "gt.csv", "image,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\na1,1,0,0,0,0,0,0,0\n",
                             "MEL"),
    "ham10000-without-dx": ("ham10000", "HAM10000_metadata.csv", "lesion_id,image_id,age\nL1,a1,40\n", "dx"),
    "isic_archive-without-isic_id": ("isic_archive", "metadata.csv",
                                     "attribution,copyright_license,diagnosis_1\nx,CC-0,Benign\n", "isic_id"),
}


@pytest.mark.parametrize(("fmt", "filename", "text", "column"), list(MISSING_COLUMNS.values()),
                         ids=list(MISSING_COLUMNS))
def test_missing_required_column_is_named_in_every_format(fmt, filename, text, column, images_dir, tmp_path):
    csv = tmp_path / filename
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        load_table(csv, img_dir=images_dir, format=fmt)
    assert f"missing required column {column!r}" in str(info.value)
    assert_names_where(info.value, csv, 1, column)


def test_skip_missing_turns_the_missing_file_case_into_a_warning(images_dir, tmp_path):
    case = next(c for c in CSV_CASES if c.id == "missing-image-file")
    csv = tmp_path / "labels.csv"
    csv.write_bytes(case.data)
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 rows whose image file is missing"):
        table = load_table(csv, img_dir=images_dir, skip_missing=True)
    assert table["image_id"].tolist() == ["a1", "a2", "a4"] and isinstance(table, pd.DataFrame)
