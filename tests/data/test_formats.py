"""Generic CSV format, reading CSVs with line numbers and the shared validation step."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backend.data.csv_rows import read_csv_rows
from backend.data.formats import MissingImagesWarning, load_table
from backend.data.schema import ANATOM_SITES, TABLE_COLUMNS
from backend.data.splits import split_groups
from backend.errors import DataFormatError
from tests.conftest import make_lesion_image

HEADER = "image,diagnosis,label,thickness_mm,thickness_lo_mm,thickness_hi_mm,age_approx,sex,anatom_site_general"


def write_images(folder: Path, names: list[str], seed: int = 0) -> None:
    """Tiny real PNG/JPEG lesion images (format from the extension)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(make_lesion_image(rng, 32)).save(folder / name)


def make_csv(tmp_path: Path, body: str, images: list[str] | None = None, name: str = "labels.csv") -> Path:
    """Write a CSV (header + rows) and, in ``images/`` beside it, the images it needs."""
    csv = tmp_path / name
    csv.write_text(body, encoding="utf-8")
    write_images(tmp_path / "images", images if images is not None else [f"a{i}.png" for i in range(1, 8)])
    return csv


def test_generic_happy_path_normalises_everything(tmp_path):
    csv = make_csv(tmp_path, "\n".join([
        HEADER + ",width,lesion_id,patient_id,dataset,license,attribution",
        "a1.png,MEL,1,0.0,,,45,Male,back,100,L1,P1,D,CC-0,Someone",   # in situ, HAM site spelling
        "a2,mel,,1.3,,,,female,torso,100,,,,,",                    # bare stem, derived label, exact
        "a3.png,MEL,1,,0.76,1.5,70,unknown,unknown,1,,,,,",          # band
        "a4.png,MEL,1,,1.5,,,,,1,,,,,",                              # open band
        "a5.png,NV,0,,,,0,,Anterior Torso,1,,,,,",                   # no thickness
        "a6.png,,1,,,,,,,1,,,,,",                                    # label only
        "a7.png,UNK,,,,,120,f,acral,1,,,,,",
    ]) + "\n")
    table = load_table(csv)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == 7 and table.attrs["n_skipped_missing"] == 0 and table.attrs["format"] == "generic"
    images_dir = (tmp_path / "images").resolve()
    assert table["image"].tolist() == [str(images_dir / f"a{i}.png") for i in range(1, 8)]
    assert table["image_id"].tolist() == [f"a{i}" for i in range(1, 8)]
    assert table["diagnosis"].tolist()[:5] == ["MEL", "MEL", "MEL", "MEL", "NV"]
    assert pd.isna(table["diagnosis"][5]) and table["diagnosis"][6] == "UNK"
    assert table["label"].tolist() == [1, 1, 1, 1, 0, 1, 0] and table["label"].dtype == np.int64
    lo, hi = table["thickness_lo_mm"].tolist(), table["thickness_hi_mm"].tolist()
    assert (lo[0], hi[0]) == (0.0, 0.0)
    assert (lo[1], hi[1]) == (1.3, 1.3)
    assert (lo[2], hi[2]) == (0.76, 1.5)
    assert lo[3] == 1.5 and math.isinf(hi[3])
    assert all(math.isnan(v) for v in lo[4:] + hi[4:])
    assert table["age_approx"].tolist()[:1] == [45.0] and math.isnan(table["age_approx"][1])
    assert table["age_approx"][4] == 0.0 and table["age_approx"][6] == 120.0
    assert table["sex"].tolist()[:2] == ["male", "female"] and pd.isna(table["sex"][2]) and table["sex"][6] == "female"
    sites = table["anatom_site_general"]
    assert sites[0] == "posterior torso" and sites[1] == "torso" and sites[4] == "anterior torso"
    assert pd.isna(sites[2]) and pd.isna(sites[3]) and sites[6] == "palms/soles"
    assert table.loc[0, ["lesion_id", "patient_id", "dataset", "license", "attribution"]].tolist() == [
        "L1", "P1", "D", "CC-0", "Someone"]
    assert table.loc[1, ["lesion_id", "patient_id", "dataset"]].isna().all()


def test_placeholder_ids_are_no_ids_so_their_rows_are_not_one_patient(tmp_path):
    rows = [f"a{i}.png,NV,0,,,,,,,1,{lesion},{patient},unknown,,"
            for i, (lesion, patient) in enumerate([("unknown", "unknown"), ("NA", "nan"), ("n/a", "None"),
                                                   ("L1", "unknown"), ("", "P9"), ("UNK", "")], start=1)]
    csv = make_csv(tmp_path, "\n".join([HEADER + ",width,lesion_id,patient_id,dataset,license,attribution", *rows])
                   + "\n")
    table = load_table(csv)
    assert table["lesion_id"].isna().tolist() == [True, True, True, False, True, True]
    assert table["patient_id"].isna().tolist() == [True, True, True, True, False, True]
    assert table["dataset"].tolist() == ["unknown"] * 6  # free text keeps its words
    assert len(set(split_groups(table))) == 6  # each row is its own group, not one "unknown" patient


def test_thickness_alias_and_upper_bound_only(tmp_path):
    csv = make_csv(tmp_path, "image,label,thickness,thickness_lo_mm,thickness_hi_mm\n"
                             "a1.png,1,0.5,,\na2.png,1,,,0.76\na3.png,0,,,\n")
    table = load_table(csv)
    assert table["thickness_lo_mm"].tolist()[:2] == [0.5, 0.0]
    assert table["thickness_hi_mm"].tolist()[:2] == [0.5, 0.76]


def test_default_img_dir_is_the_csv_folder_without_images_subfolder(tmp_path):
    write_images(tmp_path, ["x.jpg"])
    csv = tmp_path / "t.csv"
    csv.write_text("image,label\nx,0\n")
    table = load_table(csv)
    assert table["image"][0] == str(tmp_path.resolve() / "x.jpg") and table["image_id"][0] == "x"


def test_explicit_img_dir_and_case_insensitive_extension(tmp_path):
    write_images(tmp_path / "pics", ["Up.PNG"])
    csv = tmp_path / "t.csv"
    csv.write_text("image,label\nUp,0\n")
    assert load_table(csv, img_dir=tmp_path / "pics")["image_id"][0] == "Up"


BAD_ROWS = [
    # (rows after the header, expected line, expected field, message fragment)
    pytest.param("a1.png,XYZ,1,,,,,,", 2, "diagnosis", "unknown diagnosis 'XYZ'", id="unknown-diagnosis"),
    pytest.param("a1.png,NV,0,,,,,,\na2.png,,2,,,,,,", 3, "label", "must be 0 (benign) or 1", id="label-not-0-1"),
    pytest.param("a1.png,BCC,0,,,,,,", 2, "label", "label 0 contradicts diagnosis BCC", id="label-contradicts"),
    pytest.param("a1.png,,,,,,,,", 2, "label", "neither a label nor a diagnosis", id="no-label"),
    pytest.param("a1.png,MEL,1,abc,,,,,", 2, "thickness_mm", "'abc' is not a number", id="thickness-text"),
    pytest.param("a1.png,MEL,1,-0.5,,,,,", 2, "thickness_mm", "'-0.5' is negative", id="thickness-negative"),
    pytest.param("a1.png,MEL,1,,2.0,1.0,,,", 2, "thickness_lo_mm", "exceeds its upper bound", id="lo-above-hi"),
    pytest.param("a1.png,MEL,1,0.5,0.76,1.5,,,", 2, "thickness_mm", "disagrees with the thickness band",
                 id="exact-vs-band"),
    pytest.param("a1.png,MEL,1,,,,,,\na2.png,NV,0,1.2,,,,,", 3, "thickness_mm", "only defined for melanoma, but "
                 "this row is NV", id="thickness-on-nevus"),
    pytest.param("a1.png,,0,,0.76,,,,", 2, "thickness_lo_mm", "this row is label 0", id="thickness-on-benign"),
    pytest.param("a1.png,NV,0,,,,forty,,", 2, "age_approx", "'forty' is not a number", id="age-text"),
    pytest.param("a1.png,NV,0,,,,-3,,", 2, "age_approx", "negative", id="age-negative"),
    pytest.param("a1.png,NV,0,,,,130,,", 2, "age_approx", "above 120", id="age-too-old"),
    pytest.param("a1.png,NV,0,,,,,x,", 2, "sex", "unknown sex 'x'", id="sex"),
    pytest.param("a1.png,NV,0,,,,,,elbow", 2, "anatom_site_general", "unknown anatomical site 'elbow'", id="site"),
    pytest.param("a1.png,NV,0,,,,,,\n,NV,0,,,,,,", 3, "image", "image name is blank", id="blank-image"),
    pytest.param("a1.png,NV,0,,,,,,\na2.png,NV,0,,,,,,\na1,NV,0,,,,,,", 4, "image",
                 "'a1' is listed twice, on lines 2 and 4", id="duplicate-image"),
]


@pytest.mark.parametrize(("rows", "line", "field", "fragment"), BAD_ROWS)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, line, field, fragment):
    csv = make_csv(tmp_path, f"{HEADER}\n{rows}\n")
    with pytest.raises(DataFormatError, match="labels.csv") as info:
        load_table(csv)
    err = info.value
    assert (err.line, err.field) == (line, field), str(err)
    assert f"line {line}" in str(err) and f"field '{field}'" in str(err) and fragment in str(err)


def test_error_counts_further_bad_rows(tmp_path):
    csv = make_csv(tmp_path, f"{HEADER}\na1.png,ZZ,0,,,,,,\na2.png,ZZ,0,,,,,,\na3.png,ZZ,0,,,,,,\n")
    with pytest.raises(DataFormatError, match=r"line 2.*\(2 more rows like this\)"):
        load_table(csv)


def test_wrong_number_of_fields(tmp_path):
    csv = make_csv(tmp_path, "image,label\na1.png,0\na2.png,0,extra\n")
    with pytest.raises(DataFormatError, match=r"labels.csv, line 3: expected 2 fields as in the header, found 3"):
        load_table(csv)


def test_quoted_multiline_cell_keeps_true_line_numbers(tmp_path):
    csv = make_csv(tmp_path, 'image,label,attribution\na1.png,0,"two\nlines"\na2.png,7,x\n')
    with pytest.raises(DataFormatError, match="line 4, field 'label'"):
        load_table(csv)


def test_missing_required_column_lists_columns_found(tmp_path):
    csv = make_csv(tmp_path, "img,label,age_approx\na1.png,0,3\n")
    with pytest.raises(DataFormatError) as info:
        load_table(csv, format="generic")
    msg = str(info.value)
    assert "labels.csv, line 1, field 'image'" in msg and "missing required column 'image'" in msg
    assert "columns found: 'img', 'label', 'age_approx'" in msg


def test_needs_label_or_diagnosis_column(tmp_path):
    csv = make_csv(tmp_path, "image,age_approx\na1.png,3\n")
    with pytest.raises(DataFormatError, match="at least one of the columns 'label', 'diagnosis'"):
        load_table(csv, format="generic")


def test_non_utf8_file_is_a_clear_error(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes("image,label,attribution\na1.png,0,ok\na2.png,0,Clínic\n".encode("latin-1"))
    write_images(tmp_path / "images", ["a1.png", "a2.png"])
    with pytest.raises(DataFormatError, match=r"labels.csv, line 3: not UTF-8 text: byte 0xed .*as UTF-8"):
        load_table(csv, format="generic")


def test_utf8_bom_is_accepted(tmp_path):
    csv = make_csv(tmp_path, "\ufeffimage,label\na1.png,0\n")
    assert load_table(csv)["image_id"].tolist() == ["a1"]


@pytest.mark.parametrize("content", [b"", b"\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file(tmp_path, content):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(content)
    with pytest.raises(DataFormatError, match="labels.csv: file is empty"):
        load_table(csv)
    with pytest.raises(DataFormatError, match="file is empty"):
        load_table(csv, format="generic")


def test_header_without_rows(tmp_path):
    csv = make_csv(tmp_path, "image,label\n")
    with pytest.raises(DataFormatError, match="header but no data rows"):
        load_table(csv)


def test_missing_images_error_names_line_field_and_count(tmp_path):
    csv = make_csv(tmp_path, "image,label\na1.png,0\nnope1.png,0\na2.png,1\nnope2,0\n")
    with pytest.raises(DataFormatError) as info:
        load_table(csv)
    msg = str(info.value)
    assert "labels.csv, line 3, field 'image'" in msg and "'nope1.png' not found" in msg
    assert "2 of 4 rows have no image file" in msg and "skip_missing" in msg


def test_missing_image_folder_is_named(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("image,label\na1.png,0\n")
    with pytest.raises(DataFormatError, match="does not exist"):
        load_table(csv, img_dir=tmp_path / "absent")


def test_skip_missing_drops_rows_with_one_warning(tmp_path):
    csv = make_csv(tmp_path, "image,label\na1.png,0\nnope1.png,0\na2.png,1\nnope2,0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_table(csv, skip_missing=True)
    assert table["image_id"].tolist() == ["a1", "a2"] and table.index.tolist() == [0, 1]
    assert table.attrs["n_skipped_missing"] == 2
    assert len(caught) == 1 and issubclass(caught[0].category, MissingImagesWarning)
    assert "skipped 2 of 4 rows" in str(caught[0].message)


def test_check_images_false_keeps_rows_without_files(tmp_path):
    csv = make_csv(tmp_path, "image,label\na1.png,0\nnope.png,0\n")
    table = load_table(csv, check_images=False)
    assert table["image"].tolist() == [str((tmp_path / "images").resolve() / n) for n in ("a1.png", "nope.png")]
    assert table.attrs["n_skipped_missing"] == 0


def test_unsupported_image_type(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.gif").write_bytes(b"GIF89a")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\na.gif,0\n")
    with pytest.raises(DataFormatError, match="line 2, field 'image': 'a.gif' is not a supported image type"):
        load_table(csv)


def test_read_csv_rows_lines_skip_blank_lines(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n\n3,4\r\n")
    rows = read_csv_rows(path, required=("a",))
    assert rows["_line"].tolist() == [2, 4] and rows["b"].tolist() == ["2", "4"]
    path.write_text("a,a\n1,2\n")
    with pytest.raises(DataFormatError, match="column 'a' appears twice"):
        read_csv_rows(path)


def test_nonexistent_path(tmp_path):
    with pytest.raises(DataFormatError, match="no such file or folder"):
        load_table(tmp_path / "absent.csv")


def test_generic_rejects_metadata_csv(tmp_path):
    csv = make_csv(tmp_path, "image,label\na1.png,0\n")
    with pytest.raises(DataFormatError, match="takes no separate metadata file"):
        load_table(csv, metadata_csv=tmp_path / "m.csv")


# --------------------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_real_labels_csv_loads(shared_data):
    table = load_table(shared_data / "labels.csv")
    assert len(table) == 14381 and list(table.columns) == list(TABLE_COLUMNS)
    assert table["image_id"].is_unique and table.attrs["n_skipped_missing"] == 0
    counts = table["diagnosis"].value_counts().to_dict()
    assert counts == {"NV": 8581, "MEL": 1970, "BKL": 1440, "UNK": 1223, "BCC": 540, "SCC": 202, "VASC": 158,
                      "DF": 135, "AK": 132}
    assert (table["label"] == table["diagnosis"].isin(["MEL", "BCC", "SCC"])).all()
    bands = table.dropna(subset=["thickness_lo_mm"]).groupby(["thickness_lo_mm", "thickness_hi_mm"]).size()
    assert bands.to_dict() == {(0.0, 0.0): 38, (0.0, 0.76): 62, (0.76, 1.5): 35, (1.5, math.inf): 13}
    assert set(table["anatom_site_general"].dropna()) <= set(ANATOM_SITES)
    assert table["sex"].notna().sum() == 13813 and table["lesion_id"].notna().sum() == 14381 - 2463
    for path in table["image"].sample(5, random_state=0):
        assert Path(path).is_absolute() and Path(path).is_file()
