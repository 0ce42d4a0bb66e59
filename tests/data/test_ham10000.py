"""HAM10000 adapter: dx codes, localization normalisation, errors, real metadata file."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from backend.data.formats import MissingImagesWarning, detect_format, load_table
from backend.data.formats.ham10000 import DX_CODES
from backend.errors import DataFormatError
from tests.data.test_formats import write_images

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
LOCALIZATIONS = {
    "back": "posterior torso", "trunk": "torso", "abdomen": "anterior torso", "chest": "anterior torso",
    "face": "head/neck", "scalp": "head/neck", "ear": "head/neck", "neck": "head/neck",
    "hand": "upper extremity", "upper extremity": "upper extremity", "foot": "lower extremity",
    "lower extremity": "lower extremity", "acral": "palms/soles", "genital": "oral/genital", "unknown": None,
}


def write_ham(tmp_path, rows, n_images=None):
    path = tmp_path / "HAM10000_metadata.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    n = len(rows) if n_images is None else n_images
    write_images(tmp_path / "images", [f"ISIC_{i}.jpg" for i in range(n)])
    return path


def test_dx_codes_and_localizations_map(tmp_path):
    dxs = list(DX_CODES)
    rows = [f"HAM_{i // 2},ISIC_{i},{dxs[i % len(dxs)]},histo,{20 + i}.0,{['male', 'female', 'unknown'][i % 3]},{loc}"
            for i, loc in enumerate(LOCALIZATIONS)]
    path = write_ham(tmp_path, rows)
    assert detect_format(path) == "ham10000"
    table = load_table(path)
    assert table.attrs["format"] == "ham10000" and len(table) == len(LOCALIZATIONS)
    expected_sites = list(LOCALIZATIONS.values())
    assert [None if pd.isna(s) else s for s in table["anatom_site_general"]] == expected_sites
    assert table["diagnosis"].tolist() == [DX_CODES[dxs[i % len(dxs)]] for i in range(len(rows))]
    assert table["label"].tolist() == [int(DX_CODES[dxs[i % len(dxs)]] in ("MEL", "BCC")) for i in range(len(rows))]
    assert table["age_approx"].tolist() == [20.0 + i for i in range(len(rows))]
    assert table["sex"].tolist()[:2] == ["male", "female"] and pd.isna(table["sex"][2])
    assert table["lesion_id"].tolist()[:3] == ["HAM_0", "HAM_0", "HAM_1"] and table["patient_id"].isna().all()
    assert set(table["dataset"]) == {"HAM10000"} and table["image_id"].tolist()[0] == "ISIC_0"


def test_blank_age_and_missing_optional_columns(tmp_path):
    path = tmp_path / "ham.csv"
    path.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_0,MEL\n")
    write_images(tmp_path / "images", ["ISIC_0.jpg"])
    table = load_table(path)
    assert table["diagnosis"].tolist() == ["MEL"] and math.isnan(table["age_approx"][0])
    assert pd.isna(table["anatom_site_general"][0])


@pytest.mark.parametrize(("row", "field", "fragment"), [
    ("HAM_9,ISIC_1,melanoma,histo,50.0,male,back", "dx", "unknown dx code 'melanoma'"),
    ("HAM_9,ISIC_1,nv,histo,50.0,male,elbow", "localization", "unknown anatomical site 'elbow'"),
    ("HAM_9,ISIC_1,nv,histo,old,male,back", "age", "'old' is not a number"),
    ("HAM_9,ISIC_1,nv,histo,50.0,mail,back", "sex", "unknown sex 'mail'"),
    ("HAM_9,ISIC_0,nv,histo,50.0,male,back", "image_id", "'ISIC_0' is listed twice, on lines 2 and 3"),
], ids=["dx", "localization", "age", "sex", "duplicate"])
def test_bad_rows_name_line_and_ham_field(tmp_path, row, field, fragment):
    path = write_ham(tmp_path, ["HAM_1,ISIC_0,nv,histo,50.0,male,back", row])
    with pytest.raises(DataFormatError) as info:
        load_table(path)
    msg = str(info.value)
    assert f"HAM10000_metadata.csv, line 3, field '{field}'" in msg and fragment in msg


def test_missing_images_name_image_id_field(tmp_path):
    path = write_ham(tmp_path, ["HAM_1,ISIC_0,nv,histo,50.0,male,back", "HAM_2,ISIC_7,bcc,histo,50.0,male,back"],
                     n_images=1)
    with pytest.raises(DataFormatError, match=r"line 3, field 'image_id': image file 'ISIC_7' not found"):
        load_table(path)
    with pytest.warns(MissingImagesWarning, match="skipped 1 of 2"):
        assert load_table(path, skip_missing=True)["image_id"].tolist() == ["ISIC_0"]


def test_rejects_metadata_csv(tmp_path):
    path = write_ham(tmp_path, ["HAM_1,ISIC_0,nv,histo,50.0,male,back"])
    with pytest.raises(DataFormatError, match="pass no metadata_csv"):
        load_table(path, metadata_csv=tmp_path / "x.csv")


@pytest.mark.integration
def test_real_ham10000_matches_labels_csv(shared_data):
    path = shared_data / "formats" / "HAM10000_metadata.csv"
    table = load_table(path, img_dir=shared_data / "images", skip_missing=True)
    assert len(table) + table.attrs["n_skipped_missing"] == 10015 and len(table) > 0
    assert table["lesion_id"].notna().all() and table["image_id"].is_unique
    labels = load_table(shared_data / "labels.csv").set_index("image_id")
    both = table.merge(labels, left_on="image_id", right_index=True, suffixes=("", "_ref"))
    assert len(both) == len(table)

    def same(column: str) -> pd.Series:
        return (both[column] == both[f"{column}_ref"]) | (both[column].isna() & both[f"{column}_ref"].isna())

    assert same("lesion_id").all() and same("anatom_site_general").all()
    assert same("sex").mean() > 0.99 and same("age_approx").mean() > 0.99  # labels.csv filled a few from ISIC
    # akiec includes Bowen's disease, which ISIC 2019 (and labels.csv) relabelled SCC: HAM10000 alone says AK
    relabelled = (both["diagnosis"] == "AK") & (both["diagnosis_ref"] == "SCC")
    assert 0 < relabelled.sum() < (both["diagnosis"] == "AK").sum()
    assert same("diagnosis")[~relabelled].all() and same("label")[~relabelled].all()
