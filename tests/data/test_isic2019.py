"""ISIC 2019 adapter: one-hot ground truth + metadata, ``_downsampled`` ids, errors, real files."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from backend.data.formats import MissingImagesWarning, detect_format, load_table
from backend.data.formats.isic2019 import METADATA_FILENAME
from backend.errors import DataFormatError
from tests.data.test_formats import write_images

GT_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"


def write_isic(tmp_path, gt_rows, meta_rows=None, images=("ISIC_1", "ISIC_2", "ISIC_3")):
    gt = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    gt.write_text("\r\n".join([GT_HEADER, *gt_rows]) + "\r\n")
    if meta_rows is not None:
        (tmp_path / METADATA_FILENAME).write_text("\n".join([META_HEADER, *meta_rows]) + "\n")
    write_images(tmp_path / "images", [f"{name}.jpg" for name in images])
    return gt


def test_happy_path_with_metadata_beside(tmp_path):
    gt = write_isic(tmp_path, [
        "ISIC_1,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
        "ISIC_2_downsampled,0,1,0,0,0,0,0,0,0",
        "ISIC_3,0,0,0,0,0,0,0,1,0",
    ], [
        "ISIC_2_downsampled,35,lower extremity,BCN_1,female",
        "ISIC_1,55,anterior torso,,male",
        "ISIC_3,,,,",
    ])
    assert detect_format(gt) == "isic2019"
    table = load_table(gt)
    assert table.attrs["format"] == "isic2019" and len(table) == 3
    assert table["image_id"].tolist() == ["ISIC_1", "ISIC_2", "ISIC_3"]
    assert table["image"][1].endswith("images/ISIC_2.jpg")
    assert table["diagnosis"].tolist() == ["MEL", "NV", "SCC"] and table["label"].tolist() == [1, 0, 1]
    assert table["age_approx"].tolist()[:2] == [55.0, 35.0] and math.isnan(table["age_approx"][2])
    assert table["sex"].tolist()[:2] == ["male", "female"] and pd.isna(table["sex"][2])
    assert table["anatom_site_general"].tolist()[:2] == ["anterior torso", "lower extremity"]
    assert pd.isna(table["lesion_id"][0]) and table["lesion_id"][1] == "BCN_1"
    assert set(table["dataset"]) == {"ISIC2019"} and table["license"].notna().all()
    assert table["thickness_lo_mm"].isna().all() and table["patient_id"].isna().all()


def test_downsampled_file_name_is_found_as_is(tmp_path):
    gt = write_isic(tmp_path, ["ISIC_9_downsampled,0,1,0,0,0,0,0,0,0"], images=("ISIC_9_downsampled",))
    assert load_table(gt)["image_id"].tolist() == ["ISIC_9_downsampled"]


def test_explicit_metadata_csv_and_no_metadata(tmp_path):
    gt = write_isic(tmp_path, ["ISIC_1,0,0,1,0,0,0,0,0,0"])
    table = load_table(gt)
    assert table["age_approx"].isna().all() and table["sex"].isna().all() and table["label"].tolist() == [1]
    meta = tmp_path / "elsewhere.csv"
    meta.write_text(f"{META_HEADER}\nISIC_1,40,head/neck,L9,female\n")
    table = load_table(gt, metadata_csv=meta)
    assert table.loc[0, ["age_approx", "anatom_site_general", "lesion_id", "sex"]].tolist() == [
        40.0, "head/neck", "L9", "female"]
    with pytest.raises(DataFormatError, match="absent.csv: metadata file not found"):
        load_table(gt, metadata_csv=tmp_path / "absent.csv")


@pytest.mark.parametrize(("row", "field", "fragment"), [
    ("ISIC_2,1,1,0,0,0,0,0,0,0", "MEL+NV", "found 2 (MEL, NV)"),
    ("ISIC_2,0,0,0,0,0,0,0,0,0", "MEL..UNK", "found none"),
    ("ISIC_2,0,0,0,0,2,0,0,0,0", "BKL", "must be 0 or 1, got '2'"),
    ("ISIC_2,0,0,0,0,x,0,0,0,0", "BKL", "must be 0 or 1, got 'x'"),
], ids=["two-hot", "zero-hot", "two", "text"])
def test_bad_one_hot_rows(tmp_path, row, field, fragment):
    gt = write_isic(tmp_path, ["ISIC_1,1,0,0,0,0,0,0,0,0", row])
    with pytest.raises(DataFormatError) as info:
        load_table(gt)
    msg = str(info.value)
    assert "GroundTruth.csv, line 3" in msg and f"field '{field}'" in msg and fragment in msg


def test_missing_one_hot_column(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC\nISIC_1,1,0,0,0,0,0,0\n")
    with pytest.raises(DataFormatError, match="cannot tell the label format"):
        load_table(gt)
    with pytest.raises(DataFormatError, match="gt.csv, line 1, field 'SCC': missing required column 'SCC'"):
        load_table(gt, format="isic2019")


@pytest.mark.parametrize(("meta_row", "field", "fragment"), [
    ("ISIC_2,30,elbow,,male", "anatom_site_general", "unknown anatomical site 'elbow'"),
    ("ISIC_2,thirty,,,male", "age_approx", "'thirty' is not a number"),
    ("ISIC_2,30,,,other", "sex", "unknown sex 'other'"),
], ids=["site", "age", "sex"])
def test_bad_metadata_names_the_metadata_file(tmp_path, meta_row, field, fragment):
    gt = write_isic(tmp_path, ["ISIC_1,1,0,0,0,0,0,0,0,0", "ISIC_2,0,1,0,0,0,0,0,0,0"],
                    ["ISIC_1,30,,,male", meta_row])
    with pytest.raises(DataFormatError) as info:
        load_table(gt)
    msg = str(info.value)
    assert f"{METADATA_FILENAME}, line 3, field '{field}'" in msg and fragment in msg


def test_duplicate_metadata_rows(tmp_path):
    gt = write_isic(tmp_path, ["ISIC_1,1,0,0,0,0,0,0,0,0"], ["ISIC_1,30,,,male", "ISIC_1_downsampled,30,,,male"])
    with pytest.raises(DataFormatError, match=r"Metadata.csv, line 3, field 'image'.*lines 2 and 3"):
        load_table(gt)


def test_duplicate_ground_truth_rows(tmp_path):
    gt = write_isic(tmp_path, ["ISIC_1,1,0,0,0,0,0,0,0,0", "ISIC_2,0,1,0,0,0,0,0,0,0", "ISIC_1,1,0,0,0,0,0,0,0,0"])
    with pytest.raises(DataFormatError, match=r"GroundTruth.csv, line 4, field 'image'.*lines 2 and 4"):
        load_table(gt)


def test_missing_images_with_and_without_skip(tmp_path):
    gt = write_isic(tmp_path, ["ISIC_1,1,0,0,0,0,0,0,0,0", "ISIC_404_downsampled,0,1,0,0,0,0,0,0,0"])
    with pytest.raises(DataFormatError, match=r"line 3, field 'image'.*1 of 2 rows have no image file"):
        load_table(gt)
    with pytest.warns(MissingImagesWarning, match="skipped 1 of 2 rows"):
        table = load_table(gt, skip_missing=True)
    assert table["image_id"].tolist() == ["ISIC_1"] and table.attrs["n_skipped_missing"] == 1


@pytest.mark.integration
def test_real_isic2019_files_load_present_subset(shared_data):
    gt = shared_data / "formats" / "ISIC_2019_Training_GroundTruth.csv"
    with pytest.raises(DataFormatError, match=r"field 'image'.*13135 of 25330 rows have no image file"):
        load_table(gt, img_dir=shared_data / "images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_table(gt, img_dir=shared_data / "images", skip_missing=True)
    assert len([w for w in caught if issubclass(w.category, MissingImagesWarning)]) == 1
    assert len(table) == 12195 and table.attrs["n_skipped_missing"] == 13135
    assert table["image_id"].is_unique and not table["image_id"].str.endswith("_downsampled").any()
    assert table["age_approx"].notna().mean() > 0.9 and table["sex"].notna().mean() > 0.9
    labels = load_table(shared_data / "labels.csv").set_index("image_id")
    both = table.merge(labels, left_on="image_id", right_index=True, suffixes=("", "_ref"))
    assert len(both) == len(table)
    assert (both["diagnosis"] == both["diagnosis_ref"]).all() and (both["label"] == both["label_ref"]).all()
    row = table.set_index("image_id").loc["ISIC_0000000"]
    assert (row["diagnosis"], row["age_approx"], row["sex"], row["anatom_site_general"]) == (
        "NV", 55.0, "female", "anterior torso")
