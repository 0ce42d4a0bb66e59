"""ISIC Archive (isic-cli download folder) adapter, its import CLI, and training straight from the folder."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backend.data.formats import MissingImagesWarning, detect_format, list_formats, load_table
from backend.data.formats.isic_archive import SkippedRowsWarning, UnknownDiagnosisWarning, load_isic_archive
from backend.data.formats.isic_terms import DIAGNOSIS_MAP, OTHER
from backend.data.schema import ALL_DIAGNOSES, TABLE_COLUMNS
from backend.errors import DataFormatError
from scripts.import_isic import main as import_main
from tests.conftest import REPO_ROOT, make_lesion_image

BASE = ("isic_id", "attribution", "copyright_license")
HIER = ("diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5")


def write_download(folder: Path, records: list[dict], images: bool | list[str] = True) -> Path:
    """An isic-cli download: ``metadata.csv`` laid out as isic-cli writes it, tiny JPEGs, attribution.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in records for k in r} - set(BASE))
    with (folder / "metadata.csv").open("w", newline="", encoding="utf8") as f:
        writer = csv.DictWriter(f, [*BASE, *fields])
        writer.writeheader()
        writer.writerows({"attribution": "Anonymous", "copyright_license": "CC-0", **r} for r in records)
    (folder / "attribution.txt").write_text("Anonymous", encoding="utf8")
    names = [r["isic_id"] for r in records] if images is True else (images or [])
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(make_lesion_image(rng, 32)).save(folder / f"{name}.jpg", quality=90)
    return folder


def hier(d1: str, d2: str = "", d3: str = "", d4: str = "", **extra: str) -> dict:
    return {"diagnosis_1": d1, "diagnosis_2": d2, "diagnosis_3": d3, "diagnosis_4": d4, "diagnosis_5": "", **extra}


def legacy_records() -> list[dict]:
    rows = [
        ("melanoma", "malignant", "1.2", "invasive melanoma", "anterior torso", "male", "55"),
        ("melanoma", "malignant", "", "melanoma in situ", "head/neck", "female", "70"),
        ("nevus", "benign", "", "", "lower extremity", "female", "35"),
        ("basal cell carcinoma", "malignant", "", "", "head/neck", "male", "80"),
        ("actinic keratosis", "indeterminate", "", "", "upper extremity", "", ""),
        ("seborrheic keratosis", "benign", "", "", "posterior torso", "male", "60"),
        ("solar lentigo", "benign", "", "", "", "", ""),
        ("lichenoid keratosis", "", "", "", "lateral torso", "", ""),
        ("dermatofibroma", "benign", "", "", "", "", ""),
        ("angioma", "benign", "", "", "palms/soles", "", ""),
        ("squamous cell carcinoma", "malignant", "", "", "oral/genital", "", ""),
        ("atypical melanocytic proliferation", "indeterminate/benign", "", "", "", "", ""),
        ("merkel cell carcinoma", "malignant", "", "", "", "", ""),
    ]
    return [{"isic_id": f"ISIC_{i:07d}", "attribution": f"Clinic {i % 2}", "copyright_license": "CC-BY-NC",
             "age_approx": age, "anatom_site_general": site, "benign_malignant": bm, "diagnosis": dx,
             "diagnosis_confirm_type": "histopathology", "image_type": "dermoscopic", "lesion_id": f"IL_{i:07d}",
             "mel_class": mel_class, "mel_thick_mm": thick, "mel_ulcer": "", "patient_id": f"IP_{i // 2:07d}",
             "sex": sex}
            for i, (dx, bm, thick, mel_class, site, sex, age) in enumerate(rows)]


def test_registered_and_detected_as_folder_or_file(tmp_path):
    folder = write_download(tmp_path / "dl", legacy_records()[:2])
    assert "isic_archive" in list_formats()
    assert detect_format(folder) == "isic_archive" and detect_format(folder / "metadata.csv") == "isic_archive"
    header = (folder / "metadata.csv").read_text().splitlines()[0]
    assert header.startswith("isic_id,attribution,copyright_license,age_approx,anatom_site_general,")
    other = tmp_path / "other"
    other.mkdir()
    (other / "metadata.csv").write_text("image,attribution,copyright_license,diagnosis\nx,a,CC-0,nevus\n")
    with pytest.raises(DataFormatError, match="cannot tell the label format"):
        detect_format(other)


def test_legacy_layout_maps_every_field(tmp_path):
    folder = write_download(tmp_path / "dl", legacy_records())
    table = load_table(folder)  # what scripts/train.py does with --csv DIR
    assert list(table.columns) == list(TABLE_COLUMNS) and table.attrs["format"] == "isic_archive"
    assert table["diagnosis"].fillna("-").tolist() == [
        "MEL", "MEL", "NV", "BCC", "AK", "BKL", "BKL", "BKL", "DF", "VASC", "SCC", "UNK", "-"]
    assert table["label"].tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1]
    assert (table["thickness_lo_mm"][0], table["thickness_hi_mm"][0]) == (1.2, 1.2)
    assert (table["thickness_lo_mm"][1], table["thickness_hi_mm"][1]) == (0.0, 0.0)  # in situ, blank thickness
    assert table["thickness_lo_mm"][2:].isna().all()
    assert table["image"][0] == str((folder / "ISIC_0000000.jpg").resolve())
    assert table["image_id"][12] == "ISIC_0000012" and table["lesion_id"][3] == "IL_0000003"
    assert table["patient_id"][3] == "IP_0000001" and table["age_approx"][0] == 55.0
    assert table["sex"][:2].tolist() == ["male", "female"] and pd.isna(table["sex"][4])
    assert table["anatom_site_general"][[0, 9, 10]].tolist() == ["anterior torso", "palms/soles", "oral/genital"]
    assert set(table["license"]) == {"CC-BY-NC"} and table["attribution"][:2].tolist() == ["Clinic 0", "Clinic 1"]
    assert set(table["dataset"]) == {"ISIC Archive"}


def test_hierarchical_layout_uses_most_specific_mapped_level(tmp_path):
    records = [
        hier("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive",
             "Melanoma Invasive, Superficial spreading", mel_thick_mm="1.2", anatom_site_1="Trunk",
             anatom_site_2="Posterior trunk"),
        hier("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ",
             "Melanoma in situ, Lentigo maligna type", mel_thick_mm="", anatom_site_1="Head and neck",
             anatom_site_2="Head", anatom_site_3="Face"),
        hier("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ", mel_thick_mm="0"),
        hier("Benign", "Benign melanocytic proliferations", "Nevus", "Nevus, Spitz", anatom_site_1="Lower extremity",
             anatom_site_2="Foot", anatom_site_3="Sole of foot"),
        hier("Benign", "Benign melanocytic proliferations", "Lentigo simplex"),  # not a nevus: UNK, benign
        hier("Malignant", "Malignant adnexal epithelial proliferations - Follicular"),  # level 2 only -> BCC
        hier("Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma, NOS",
             anatom_site_1="Anogenital region"),
        hier("Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma in situ"),
        hier("Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis",
             anatom_site_1="Upper extremity"),
        hier("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
        hier("Benign", "Benign epidermal proliferations", "Solar lentigo"),
        hier("Benign", "Benign epidermal proliferations", "Lichen planus like keratosis"),
        hier("Benign", "Benign soft tissue proliferations - Fibro-histiocytic", "Dermatofibroma"),
        hier("Benign", "Benign soft tissue proliferations - Vascular", "Pyogenic granuloma"),
        hier("Benign", "Benign soft tissue proliferations - Vascular", "Angiokeratoma"),
        hier("Benign"),  # ISIC 2020 style "benign, nothing more": UNK
        hier("Malignant", "Merkel cell proliferation", "Merkel cell carcinoma"),  # malignant, none of the eight
        hier("Indeterminate", "Indeterminate melanocytic proliferations", "Atypical melanocytic neoplasm"),  # dropped
    ]
    records = [{"isic_id": f"ISIC_{i:07d}", "image_type": "dermoscopic", **r} for i, r in enumerate(records)]
    folder = write_download(tmp_path / "dl", records)
    with pytest.warns(SkippedRowsWarning, match="dropped 1 rows whose diagnosis is none of"):
        table = load_isic_archive(folder)
    assert table["diagnosis"].fillna("-").tolist() == [
        "MEL", "MEL", "MEL", "NV", "UNK", "BCC", "SCC", "SCC", "AK", "BKL", "BKL", "BKL", "DF", "VASC", "VASC",
        "UNK", "-"]
    assert table["label"].tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table["thickness_lo_mm"][:3].tolist() == [1.2, 0.0, 0.0] and table["thickness_lo_mm"][3:].isna().all()
    assert table["anatom_site_general"].fillna("-")[[0, 1, 3, 6, 8, 9]].tolist() == [
        "posterior torso", "head/neck", "palms/soles", "oral/genital", "upper extremity", "-"]
    assert "ISIC_0000017" not in set(table["image_id"]) and table.attrs["n_dropped_unlabelled"] == 1


def test_mapping_table_covers_the_vocabulary():
    assert set(DIAGNOSIS_MAP.values()) == {*ALL_DIAGNOSES[:-1], OTHER}
    expected = {"Melanoma Invasive": "MEL", "Melanoma in situ": "MEL", "Melanoma, NOS": "MEL", "Nevus": "NV",
                "Basal cell carcinoma": "BCC", "Squamous cell carcinoma, NOS": "SCC", "Hemangioma": "VASC",
                "Solar or actinic keratosis": "AK", "Seborrheic keratosis": "BKL", "Solar lentigo": "BKL",
                "Lichen planus like keratosis": "BKL", "Dermatofibroma": "DF", "Angiokeratoma": "VASC",
                "Malignant melanocytic proliferations (Melanoma)": "MEL", "Benign melanocytic proliferations": "NV",
                "Malignant epidermal proliferations": "SCC", "Benign epidermal proliferations": "BKL",
                "Indeterminate epidermal proliferations": "AK", "Benign": OTHER, "Malignant": OTHER,
                "melanoma": "MEL", "nevus": "NV", "pigmented benign keratosis": "BKL", "vascular lesion": "VASC",
                "lichenoid keratosis": "BKL", "actinic keratosis": "AK", "squamous cell carcinoma": "SCC"}
    assert {term: DIAGNOSIS_MAP[term.lower()] for term in expected} == expected


def test_in_situ_with_positive_thickness_is_an_error(tmp_path):
    records = [{"isic_id": "ISIC_1", **hier("Malignant", "Malignant melanocytic proliferations (Melanoma)",
                                            "Melanoma Invasive"), "mel_thick_mm": "0.5"},
               {"isic_id": "ISIC_2", **hier("Malignant", "Malignant melanocytic proliferations (Melanoma)",
                                            "Melanoma in situ"), "mel_thick_mm": "0.4"}]
    folder = write_download(tmp_path / "dl", records)
    with pytest.raises(DataFormatError, match=r"metadata.csv, line 3, field 'mel_thick_mm': melanoma in situ .*'0.4'"):
        load_table(folder)


@pytest.mark.parametrize(("thick", "fragment"), [
    ("abc", "'abc' is not a number"),
    ("-1.5", "'-1.5' is negative"),
])
def test_malformed_thickness(tmp_path, thick, fragment):
    records = legacy_records()[:3]
    records[0]["mel_thick_mm"] = thick
    folder = write_download(tmp_path / "dl", records)
    with pytest.raises(DataFormatError) as info:
        load_table(folder)
    assert "metadata.csv, line 2, field 'mel_thick_mm'" in str(info.value) and fragment in str(info.value)


def test_thickness_on_a_nevus_is_an_error(tmp_path):
    records = legacy_records()[:3]
    records[2]["mel_thick_mm"] = "0.3"
    folder = write_download(tmp_path / "dl", records)
    with pytest.raises(DataFormatError, match=r"metadata.csv, line 4, field 'mel_thick_mm': Breslow thickness is "
                                              r"only defined for melanoma, but this row is NV"):
        load_table(folder)


def test_missing_columns(tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "metadata.csv").write_text("isic_id,attribution,diagnosis\nISIC_1,A,nevus\n")
    with pytest.raises(DataFormatError, match="cannot tell the label format"):
        load_table(folder)
    with pytest.raises(DataFormatError, match="line 1, field 'copyright_license': missing required column"):
        load_table(folder, format="isic_archive")
    (folder / "metadata.csv").write_text("isic_id,attribution,copyright_license,age_approx,sex\nISIC_1,A,CC-0,40,m\n")
    with pytest.raises(DataFormatError, match="needs at least one of the columns 'diagnosis_3'"):
        load_table(folder)


def test_duplicate_isic_id(tmp_path):
    records = legacy_records()[:3]
    records.append(dict(records[0]))
    folder = write_download(tmp_path / "dl", records)
    with pytest.raises(DataFormatError, match=r"line 5, field 'isic_id': image 'ISIC_0000000' is listed twice, "
                                              r"on lines 2 and 5"):
        load_table(folder)


def test_unknown_diagnoses_warn_with_counts_or_fail_when_strict(tmp_path):
    records = [
        *legacy_records()[:3],
        {"isic_id": "ISIC_0000101", "diagnosis": "nevvus", "benign_malignant": "benign"},
        {"isic_id": "ISIC_0000102", "diagnosis": "nevvus", "benign_malignant": "malignant"},
        {"isic_id": "ISIC_0000103", "diagnosis": "mystery", "benign_malignant": ""},
    ]
    folder = write_download(tmp_path / "dl", records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_isic_archive(folder)
    unknown = [str(w.message) for w in caught if issubclass(w.category, UnknownDiagnosisWarning)]
    assert len(unknown) == 1 and "diagnosis 'nevvus' x 2; diagnosis 'mystery' x 1" in unknown[0]
    assert any("dropped 1 rows" in str(w.message) for w in caught if issubclass(w.category, SkippedRowsWarning))
    rows = table.set_index("image_id")
    assert rows.loc["ISIC_0000101", "diagnosis"] == "UNK" and rows.loc["ISIC_0000101", "label"] == 0
    assert pd.isna(rows.loc["ISIC_0000102", "diagnosis"]) and rows.loc["ISIC_0000102", "label"] == 1
    assert "ISIC_0000103" not in rows.index and len(table) == 5
    with pytest.raises(DataFormatError, match=r"line 5, field 'diagnosis': unknown ISIC diagnosis 'nevvus'.*"
                                              r"'mystery' x 1"):
        load_isic_archive(folder, strict=True)


def test_unknown_deeper_level_falls_back_to_its_parent_and_is_reported(tmp_path):
    records = [{"isic_id": "ISIC_1", **hier("Malignant", "Malignant melanocytic proliferations (Melanoma)",
                                            "Melanoma, new subtype"), "mel_thick_mm": "2.5"}]
    folder = write_download(tmp_path / "dl", records)
    with pytest.warns(UnknownDiagnosisWarning, match="diagnosis_3 'Melanoma, new subtype' x 1"):
        table = load_table(folder)
    assert table["diagnosis"].tolist() == ["MEL"] and table["thickness_lo_mm"].tolist() == [2.5]


def test_non_dermoscopic_rows_skipped_with_count_or_kept(tmp_path):
    records = legacy_records()[:4]
    records[1]["image_type"] = "clinical: close-up"
    records[3]["image_type"] = "TBP tile: close-up"
    folder = write_download(tmp_path / "dl", records)
    with pytest.warns(SkippedRowsWarning, match=r"skipped 2 of 4 rows whose image_type is not dermoscopic "
                                                r"\('clinical: close-up' x 1, 'TBP tile: close-up' x 1\)"):
        table = load_isic_archive(folder)
    assert table["image_id"].tolist() == ["ISIC_0000000", "ISIC_0000002"]
    assert table.attrs["n_skipped_non_dermoscopic"] == 2
    kept = load_isic_archive(folder, keep_non_dermoscopic=True)
    assert len(kept) == 4 and kept.attrs["n_skipped_non_dermoscopic"] == 0


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("benign_malignant", "malignant", "benign_malignant malignant contradicts the diagnosis 'nevus' (NV)"),
    ("benign_malignant", "maybe", "unknown benign_malignant value 'maybe'"),
    ("anatom_site_general", "elbow", "unknown anatomical site 'elbow'"),
    ("sex", "other", "unknown sex 'other'"),
    ("age_approx", "old", "'old' is not a number"),
], ids=["contradiction", "bad-bm", "site", "sex", "age"])
def test_bad_values_name_line_and_field(tmp_path, field, value, fragment):
    records = legacy_records()[:3]
    records[2][field] = value
    folder = write_download(tmp_path / "dl", records)
    with pytest.raises(DataFormatError) as info:
        load_table(folder)
    assert f"metadata.csv, line 4, field '{field}'" in str(info.value) and fragment in str(info.value)


def test_unknown_hierarchical_site_names_its_field(tmp_path):
    folder = write_download(tmp_path / "dl", [{"isic_id": "ISIC_1", **hier("Benign"), "anatom_site_1": "Tail"}])
    with pytest.raises(DataFormatError, match=r"line 2, field 'anatom_site_1': unknown anatomical site 'Tail'"):
        load_table(folder)


def test_missing_image_is_an_error_or_skipped(tmp_path):
    records = legacy_records()[:3]
    folder = write_download(tmp_path / "dl", records, images=["ISIC_0000000", "ISIC_0000002"])
    with pytest.raises(DataFormatError, match=r"metadata.csv, line 3, field 'isic_id': image file 'ISIC_0000001' "
                                              r"not found.*1 of 3 rows have no image file"):
        load_table(folder)
    with pytest.warns(MissingImagesWarning, match="skipped 1 of 3 rows"):
        table = load_table(folder, skip_missing=True)
    assert table["image_id"].tolist() == ["ISIC_0000000", "ISIC_0000002"]


def test_images_are_looked_up_in_img_dir_first_then_the_download(tmp_path):
    folder = write_download(tmp_path / "dl", legacy_records()[:2])
    cache = tmp_path / "cache"
    cache.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(cache / "ISIC_0000001.jpg")
    table = load_table(folder, img_dir=cache)
    assert table["image"].tolist() == [str((folder / "ISIC_0000000.jpg").resolve()),
                                       str((cache / "ISIC_0000001.jpg").resolve())]


def test_cli_round_trip_and_exit_codes(tmp_path, capsys):
    folder = write_download(tmp_path / "dl", legacy_records())
    out = folder / "labels.csv"
    assert import_main([str(folder), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "13 images" in printed and "Breslow thickness on 2 melanomas (1 in situ)" in printed
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert written["image"][0] == "ISIC_0000000.jpg" and written["thickness_mm"][:2].tolist() == ["1.2", "0.0"]
    assert written["license"][0] == "CC-BY-NC" and written["attribution"][1] == "Clinic 1"
    assert detect_format(out) == "generic" and detect_format(folder) == "isic_archive"
    pd.testing.assert_frame_equal(load_table(out), load_isic_archive(folder))
    # Outside the download folder, paths stay absolute and still load.
    elsewhere = tmp_path / "labels" / "isic.csv"
    assert import_main([str(folder / "metadata.csv"), "--output", str(elsewhere)]) == 0
    assert Path(pd.read_csv(elsewhere)["image"][0]).is_absolute()
    pd.testing.assert_frame_equal(load_table(elsewhere), load_isic_archive(folder))
    capsys.readouterr()
    bad = write_download(tmp_path / "bad", legacy_records()[:3], images=[])
    assert import_main([str(bad), "--output", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metadata.csv, line 2, field 'isic_id'" in err
    assert not (tmp_path / "x.csv").exists()
    assert import_main([str(folder), "--output", str(folder / "metadata.csv")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_fast_dev_run_trains_on_the_download_folder(tmp_path):
    from backend.config import from_dict, read_yaml
    from backend.training.config import ExperimentConfig
    from backend.training.run import fit

    cycle = [("Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive", "Malignant"),
             ("Benign melanocytic proliferations", "Nevus", "Benign"),
             ("Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma", "Malignant"),
             ("Benign epidermal proliferations", "Seborrheic keratosis", "Benign")]
    records = []
    for i in range(32):
        d2, d3, d1 = cycle[i % len(cycle)]
        records.append({"isic_id": f"ISIC_{i:07d}", **hier(d1, d2, d3), "image_type": "dermoscopic",
                        "mel_thick_mm": f"{0.5 + i / 10:.1f}" if d3 == "Melanoma Invasive" else "",
                        "age_approx": str(30 + i), "sex": ("male", "female")[i % 2], "anatom_site_1": "Trunk",
                        "lesion_id": f"IL_{i:07d}"})
    folder = write_download(tmp_path / "dl", records)
    base = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    base["data"].update({"csv": str(folder), "img_dir": str(folder), "img_size": 32, "batch_size": 4})
    base["model"]["img_size"] = 32
    base["trainer"]["fast_dev_run"] = True
    base["output_dir"] = str(tmp_path / "runs")
    result = fit(from_dict(ExperimentConfig, base), test=False)
    assert (result.run_dir / "splits.csv").is_file()
    assert len(pd.read_csv(result.run_dir / "splits.csv")) == 32
    assert math.isfinite(result.metrics["train/loss"])
