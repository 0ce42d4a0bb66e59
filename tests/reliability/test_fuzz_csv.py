"""Fuzzing the label-table readers (``load_table`` with every registered format) with hypothesis.

Whatever the file holds, ``load_table`` either returns a well-formed lesion table (exactly the
schema's columns, labels 0/1, diagnoses from the list, thickness bands with 0 <= lo <= hi, ages in
range, image files that exist) or raises :class:`~backend.errors.DataFormatError` (a
``DermaLensError``) whose message starts with the file it is about. Anything else escaping (a
``KeyError``, ``UnicodeDecodeError``, pandas or csv error) is a bug. Inputs: arbitrary bytes and
text, and valid files of each format with random cells, columns, rows and encodings mutated.
``derandomize=True`` makes every run try the same examples, so CI is deterministic.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend.data.formats import list_formats, load_table
from backend.data.formats.validation import MAX_AGE
from backend.data.schema import ALL_DIAGNOSES, TABLE_COLUMNS
from backend.errors import DataFormatError, DermaLensError
from tests.reliability.corpus import lesion

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
IMAGES = ("ISIC_0000001", "ISIC_0000002", "ISIC_0000003")

# One small valid file per format: (file name, rows as lists of cells; the first row is the header).
SEEDS: dict[str, tuple[str, list[list[str]]]] = {
    "generic": ("labels.csv", [
        ["image", "diagnosis", "label", "thickness", "thickness_lo_mm", "thickness_hi_mm", "age_approx", "sex",
         "anatom_site_general", "lesion_id"],
        ["ISIC_0000001.jpg", "MEL", "1", "0.8", "", "", "55", "male", "back", "L1"],
        ["ISIC_0000002", "NV", "0", "", "", "", "40", "female", "", "L2"],
        ["ISIC_0000003.jpg", "", "1", "", "0.76", "1.5", "", "", "head/neck", ""],
    ]),
    "isic2019": ("ISIC_2019_Training_GroundTruth.csv", [
        ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"],
        ["ISIC_0000001", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"],
        ["ISIC_0000002", "0.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"],
        ["ISIC_0000003_downsampled", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "1.0"],
    ]),
    "ham10000": ("HAM10000_metadata.csv", [
        ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
        ["HAM_1", "ISIC_0000001", "mel", "histo", "60.0", "male", "back"],
        ["HAM_2", "ISIC_0000002", "nv", "follow_up", "35.0", "female", "lower extremity"],
        ["HAM_2", "ISIC_0000003", "bkl", "consensus", "", "unknown", "unknown"],
    ]),
    "isic_archive": ("metadata.csv", [
        ["isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general", "benign_malignant",
         "diagnosis_1", "diagnosis_3", "image_type", "mel_thick_mm", "sex"],
        ["ISIC_0000001", "Anonymous", "CC-0", "55", "posterior torso", "malignant", "Malignant",
         "Melanoma Invasive", "dermoscopic", "0.6", "male"],
        ["ISIC_0000002", "Anonymous", "CC-BY", "40", "", "benign", "Benign", "Nevus", "dermoscopic", "", "female"],
        ["ISIC_0000003", "Anonymous", "CC-0", "", "head/neck", "benign", "Benign", "Seborrheic keratosis",
         "clinical", "", ""],
    ]),
}

# Cell values that hit the validators' edges, mixed with arbitrary text.
TOKENS = ("", " ", "0", "1", "1.0", "-1", "2", "nan", "NaN", "inf", "-inf", "1e308", "1e-320", "unknown", "NA",
          "MEL", "mel", "nv", "UNK", "SCC", "male", "FEMALE", "back", "anterior torso", "Benign", "Malignant",
          "malignant", "indeterminate", "Melanoma in situ", "Nevus", "dermoscopic", "ISIC_0000001",
          "ISIC_0000002.jpg", "../ISIC_0000003.jpg", "/etc/passwd", "image", '"', "a,b", "x\ny", "\x00",
          "é", "\ufeff", "0x10", "1_000", "٣", "½")


def to_csv_text(rows: list[list[str]]) -> str:
    """Rows written as CSV (quoting as needed, rows of any length)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the seed images (as ``<id>.jpg``); every example's CSV is written into it."""
    root = tmp_path_factory.mktemp("fuzz_csv")
    for i, name in enumerate(IMAGES):
        lesion(50 + i, 16).save(root / f"{name}.jpg", quality=80)
    return root


def check_table(table: pd.DataFrame) -> None:
    """A successful load is a well-formed lesion table."""
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) >= 1
    assert set(table["label"].unique()) <= {0, 1}
    assert table["diagnosis"].dropna().isin(ALL_DIAGNOSES).all()
    lo, hi = table["thickness_lo_mm"], table["thickness_hi_mm"]
    assert (lo.isna() == hi.isna()).all()
    known = lo.notna()
    assert (lo[known] >= 0).all() and (lo[known] <= hi[known]).all() and np.isfinite(lo[known]).all()
    assert table.loc[known, "diagnosis"].fillna("MEL").eq("MEL").all()  # thickness only on melanoma
    age = table["age_approx"].dropna()
    assert ((age >= 0) & (age <= MAX_AGE)).all()
    assert table["image_id"].is_unique
    assert all(Path(p).is_file() for p in table["image"])


def check_outcome(path: Path, fmt: str) -> None:
    """Load ``path`` as ``fmt``: a valid table or a DataFormatError about that file; nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped-row and unknown-term warnings are part of normal loading
            table = load_table(path, img_dir=path.parent, format=fmt)
    except DermaLensError as err:
        assert isinstance(err, DataFormatError), repr(err)
        assert str(err).startswith(str(path)) or str(err).startswith(str(path.parent)), str(err)
        assert err.line is None or (isinstance(err.line, int) and err.line >= 1), err.line
        event(f"{fmt}: refused")
        return
    check_table(table)
    event(f"{fmt}: loaded")


def write(workdir: Path, fmt: str, data: bytes) -> Path:
    path = workdir / SEEDS[fmt][0]
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), st.text(max_size=300).map(lambda t: t.encode("utf-8"))),
       fmt=st.sampled_from(["auto", *sorted(SEEDS)]))
def test_fuzz_arbitrary_bytes_and_text(data: bytes, fmt: str, workdir: Path):
    check_outcome(write(workdir, "generic" if fmt == "auto" else fmt, data), fmt)


@st.composite
def random_rows(draw: st.DrawFn) -> tuple[str, bytes]:
    """Any format's real header (so detection and column checks pass) over rows of random cells."""
    fmt, header = draw(st.sampled_from(sorted(SEEDS))), draw(st.sampled_from(sorted(SEEDS)))
    cells = draw(st.lists(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)), max_size=12),
                          max_size=6))
    return fmt, to_csv_text([SEEDS[header][1][0], *cells]).encode("utf-8")


@st.composite
def mutated_seed(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid file of a random format with 1-4 mutations of cells, columns, rows or encoding."""
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    rows = [list(r) for r in SEEDS[fmt][1]]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop_column", "add_column", "rename_column",
                                     "duplicate_row", "drop_row", "short_row", "blank_row"]))
        r = draw(st.integers(0, len(rows) - 1))
        c = draw(st.integers(0, max(len(rows[r]) - 1, 0)))
        if kind == "cell" and rows[r]:
            rows[r][c] = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=16)))
        elif kind == "drop_column":
            rows = [row[:c] + row[c + 1 :] for row in rows]
        elif kind == "add_column":
            name = draw(st.one_of(st.sampled_from(TOKENS), st.sampled_from([h for s in SEEDS.values()
                                                                            for h in s[1][0]])))
            rows = [row[:c] + ([name] if i == 0 else [draw(st.sampled_from(TOKENS))]) + row[c:]
                    for i, row in enumerate(rows)]
        elif kind == "rename_column" and rows[0]:
            rows[0][c] = draw(st.sampled_from([h for s in SEEDS.values() for h in s[1][0]] + list(TOKENS)))
        elif kind == "duplicate_row":
            rows.insert(draw(st.integers(1, len(rows))), list(rows[r]))
        elif kind == "drop_row" and len(rows) > 1:
            del rows[max(r, 1)]
        elif kind == "short_row":
            rows[r] = rows[r][:c]
        elif kind == "blank_row":
            rows.insert(r, [])
    text = to_csv_text(rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "crlf"]))
    if encoding == "crlf":
        return fmt, text.replace("\n", "\r\n").encode("utf-8")
    return fmt, text.encode(encoding, errors="replace")


@FUZZ
@given(case=st.one_of(random_rows(), mutated_seed()))
def test_fuzz_structured_files(case: tuple[str, bytes], workdir: Path):
    """Real headers over random rows, and valid files with mutated cells, columns, rows and encodings."""
    fmt, data = case
    check_outcome(write(workdir, fmt, data), fmt)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_unmutated_seeds_load(fmt: str, workdir: Path):
    """The seeds are valid files of their format (else mutations would only ever explore broken files)."""
    assert sorted(SEEDS) == sorted(list_formats())  # a newly registered format needs a seed here too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_table(write(workdir, fmt, to_csv_text(SEEDS[fmt][1]).encode()), img_dir=workdir)
    assert table.attrs["format"] == fmt
    check_table(table)
    assert not math.isnan(float(table["label"].iloc[0]))
