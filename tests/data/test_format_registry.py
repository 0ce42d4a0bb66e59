"""The label-format registry: built-in formats, detection, registering a new format by decorator."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from backend.data.csv_rows import read_csv_rows
from backend.data.formats import detect_format, generic, list_formats, load_table, register_format, registry
from backend.errors import DataFormatError
from tests.data.test_formats import make_csv, write_images


def test_builtin_formats_are_registered_and_detected(tmp_path):
    assert {"generic", "isic2019", "ham10000"} <= set(list_formats())
    generic = make_csv(tmp_path, "image,diagnosis\na1.png,NV\n")
    isic = tmp_path / "gt.csv"
    isic.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\na1,0,1,0,0,0,0,0,0,0\n")
    ham = tmp_path / "ham.csv"
    ham.write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\nL,a1,nv,histo,5.0,male,back\n")
    assert [detect_format(p) for p in (generic, isic, ham)] == ["generic", "isic2019", "ham10000"]


def test_undetectable_file_lists_registered_formats(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_text("image,age_approx\na1,30\n")
    with pytest.raises(DataFormatError) as info:
        load_table(path)
    msg = str(info.value)
    assert "meta.csv" in msg and "cannot tell the label format" in msg and "columns found: image, age_approx" in msg
    assert all(name in msg for name in ("generic", "isic2019", "ham10000"))


def test_ambiguous_detection_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_format("everything", detect=lambda path: True)(generic.load)
    csv = make_csv(tmp_path, "image,label\na1.png,0\n")
    with pytest.raises(DataFormatError, match="ambiguous label format: generic, everything"):
        load_table(csv)
    assert load_table(csv, format="everything").attrs["format"] == "everything"


def test_unknown_format_name_lists_registered(tmp_path):
    csv = make_csv(tmp_path, "image,label\na1.png,0\n")
    with pytest.raises(DataFormatError, match="unknown label format 'isic2077'; registered formats: generic"):
        load_table(csv, format="isic2077")


def test_new_format_registers_and_uses_shared_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def detect(path: Path) -> bool:
        return path.is_dir() and (path / "metadata.csv").is_file()

    def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
        rows = read_csv_rows(path / "metadata.csv", required=("isic_id", "benign_malignant"))
        raw = pd.DataFrame({"_line": rows["_line"], "image": rows["isic_id"],
                            "label": rows["benign_malignant"].map({"benign": "0", "malignant": "1"}),
                            "dataset": "archive"})
        raw.attrs["sources"] = {"label": (path / "metadata.csv", "benign_malignant", "_line")}
        return raw

    assert register_format("folder", detect=detect, description="a folder with metadata.csv")(load) is load
    with pytest.raises(ValueError, match="already registered"):
        register_format("folder", detect=detect)(load)
    (tmp_path / "metadata.csv").write_text("isic_id,benign_malignant\na1,benign\na2,malignant\n")
    write_images(tmp_path / "images", ["a1.jpg", "a2.jpg"])
    table = load_table(tmp_path)
    assert table.attrs["format"] == "folder" and table["label"].tolist() == [0, 1]
    (tmp_path / "metadata.csv").write_text("isic_id,benign_malignant\na1,benign\na2,unsure\n")
    with pytest.raises(DataFormatError, match="metadata.csv, line 3, field 'benign_malignant'"):
        load_table(tmp_path)
