"""The one validation step every label format goes through: raw rows -> the lesion table.

A format's loader turns its file(s) into *raw rows* (see :mod:`backend.data.formats`);
:func:`finalize_table` checks them by the same rules for every format and builds the table of
:data:`backend.data.schema.TABLE_COLUMNS`, so every error names the file, line and field the user wrote.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from backend.data.csv_rows import LINE, raise_for_rows
from backend.data.image_paths import FolderIndex, image_id
from backend.data.schema import ALL_DIAGNOSES, IMAGE_EXTENSIONS, MALIGNANT_DIAGNOSES, TABLE_COLUMNS
from backend.data.sites import (
    MISSING_TOKENS,
    normalise_sexes,
    normalise_sites,
    unrecognised_sexes,
    unrecognised_sites,
)

#: Oldest plausible age, in years.
MAX_AGE = 120.0
#: Free-text columns copied as they are (blank = unknown).
TEXT_COLUMNS = ("lesion_id", "patient_id", "dataset", "license", "attribution")
#: The text columns that group rows (one lesion, one patient) for the split.
ID_COLUMNS = ("lesion_id", "patient_id")


class MissingImagesWarning(UserWarning):
    """Rows were dropped because their image file is missing (``skip_missing=True``)."""


class _Columns:
    """Access to raw columns as stripped text, with the file/field/line each error should name."""

    def __init__(self, raw: pd.DataFrame, path: Path) -> None:
        self.raw, self.path = raw, path
        self.sources: dict[str, tuple[object, str, str]] = dict(raw.attrs.get("sources", {}))

    def has(self, column: str) -> bool:
        return column in self.raw.columns

    def text(self, column: str) -> pd.Series:
        if column not in self.raw.columns:
            return pd.Series("", index=self.raw.index, dtype="str")
        return self.raw[column].astype("str").fillna("").str.strip()

    def fail(self, column: str, mask: object, message: str, values: pd.Series | None = None,
             count: bool = True) -> None:
        file, field, line_column = self.sources.get(column, (self.path, column, LINE))
        raise_for_rows(self.raw, mask, file, field, message, values, line_column, count)

    def number(self, column: str, *, nonnegative: bool = True) -> pd.Series:
        text = self.text(column)
        blank = text.str.lower().isin(MISSING_TOKENS)  # "", "unknown", "NA", "nan"...
        num = pd.to_numeric(text.mask(blank), errors="coerce").astype(np.float64)
        self.fail(column, ~blank & num.isna(), "{value!r} is not a number", text)
        if nonnegative:
            self.fail(column, num < 0, "{value!r} is negative", text)
        return num

    def optional_text(self, column: str) -> pd.Series:
        """Free text, blank = missing; an id column's placeholders ("unknown", "NA", "nan"...) are missing too.

        A placeholder is no id: kept as text, every row carrying it would be one patient or lesion,
        and the lesion-grouped split would put them all in one split.
        """
        text = self.text(column)
        missing = text.str.lower().isin(MISSING_TOKENS) if column in ID_COLUMNS else text == ""
        return text.mask(missing)


def _labels(cols: _Columns) -> tuple[pd.Series, pd.Series]:
    """Validated (diagnosis, label): label derived from diagnosis where only diagnosis is given."""
    diagnosis = cols.text("diagnosis").str.upper()
    cols.fail("diagnosis", (diagnosis != "") & ~diagnosis.isin(ALL_DIAGNOSES),
              f"unknown diagnosis {{value!r}} (expected one of {', '.join(ALL_DIAGNOSES)})", cols.text("diagnosis"))
    label = cols.number("label")
    cols.fail("label", label.notna() & ~label.isin([0.0, 1.0]), "label must be 0 (benign) or 1 (malignant), got "
              "{value!r}", cols.text("label"))
    derived = diagnosis.isin(MALIGNANT_DIAGNOSES).astype(np.float64).where(diagnosis != "")
    malignant = ", ".join(sorted(MALIGNANT_DIAGNOSES))
    cols.fail("label", label.notna() & derived.notna() & (label != derived),
              f"{{value}} (malignant diagnoses: {malignant})",
              "label " + cols.text("label") + " contradicts diagnosis " + diagnosis)
    label = label.fillna(derived)
    cols.fail("label" if cols.has("label") else "diagnosis", label.isna(), "row has neither a label nor a diagnosis")
    return diagnosis.mask(diagnosis == ""), label.astype(np.int64)


def _thickness(cols: _Columns, diagnosis: pd.Series, label: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Breslow thickness as (lo, hi) mm: exact lo == hi, band lo < hi, open band hi = inf.

    A band with only an upper bound starts at 0 (thickness cannot be negative). Thickness is only
    defined for melanoma: on a known non-melanoma diagnosis, or on a benign label with no diagnosis,
    it is an error rather than silently dropped.
    """
    exact = cols.number("thickness_mm")
    lo, hi = cols.number("thickness_lo_mm"), cols.number("thickness_hi_mm")
    cols.fail("thickness_mm", np.isinf(exact), "exact thickness must be finite, got {value!r}",
              cols.text("thickness_mm"))
    cols.fail("thickness_lo_mm", np.isinf(lo), "lower thickness bound must be finite, got {value!r}",
              cols.text("thickness_lo_mm"))
    conflict = exact.notna() & ((lo.notna() & (lo != exact)) | (hi.notna() & (hi != exact)))
    cols.fail("thickness_mm", conflict, "exact thickness {value!r} mm disagrees with the thickness band columns",
              cols.text("thickness_mm"))
    out_lo = exact.fillna(lo).mask(exact.isna() & lo.isna() & hi.notna(), 0.0)
    out_hi = exact.fillna(hi).mask(exact.isna() & hi.isna() & lo.notna(), np.inf)
    cols.fail("thickness_lo_mm", out_lo > out_hi, "thickness band lower bound {value!r} mm exceeds its upper bound",
              cols.text("thickness_lo_mm"))
    not_mel = out_lo.notna() & ((diagnosis.notna() & (diagnosis != "MEL")) | (diagnosis.isna() & (label == 0)))
    if not_mel.any():
        first = not_mel.idxmax()
        column = "thickness_mm" if pd.notna(exact[first]) else "thickness_lo_mm" if pd.notna(lo[first]) else (
            "thickness_hi_mm")
        what = diagnosis.fillna(label.map({0: "label 0 (benign)", 1: "label 1"}).astype("str"))
        cols.fail(column, not_mel, "Breslow thickness is only defined for melanoma, but this row is {value}", what)
    return out_lo, out_hi


def _metadata(cols: _Columns) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Validated (age_approx, sex, anatom_site_general)."""
    age = cols.number("age_approx")
    cols.fail("age_approx", age > MAX_AGE, f"age {{value!r}} is above {MAX_AGE:g}", cols.text("age_approx"))
    sex, site = cols.text("sex"), cols.text("anatom_site_general")
    cols.fail("sex", unrecognised_sexes(sex), "unknown sex {value!r} (expected male, female, or blank/unknown)", sex)
    cols.fail("anatom_site_general", unrecognised_sites(site),
              "unknown anatomical site {value!r} (see backend.data.sites.SITE_ALIASES; blank or 'unknown' = missing)",
              site)
    return age, normalise_sexes(sex), normalise_sites(site)


def _images(cols: _Columns, img_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(image path, image_id, found mask); duplicate ids and unsupported file types are errors."""
    names = cols.text("image")
    cols.fail("image", names == "", "image name is blank")
    alts = cols.text("image_alt").tolist()
    index, folder = FolderIndex(), os.path.abspath(img_dir)
    paths, ids, found = [], [], np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names.tolist()):
        hit = index.find(folder, name) or (index.find(folder, alts[i]) if alts[i] else None)
        found[i] = hit is not None
        paths.append(hit or os.path.normpath(os.path.join(folder, name)))
        ids.append(image_id(hit or name))
    cols.fail("image", found & ~pd.Series(paths).str.lower().str.endswith(IMAGE_EXTENSIONS).to_numpy(),
              f"{{value!r}} is not a supported image type ({', '.join(IMAGE_EXTENSIONS)})", names)
    id_series = pd.Series(ids, index=names.index)
    repeat = id_series.duplicated(keep="first").to_numpy()
    if repeat.any():
        first = id_series.iloc[int(np.flatnonzero(repeat)[0])]
        lines = cols.raw[LINE][(id_series == first).to_numpy()].tolist()
        shown = " and ".join(str(x) for x in lines[:2]) + (f" (and {len(lines) - 2} more)" if len(lines) > 2 else "")
        cols.fail("image", repeat, f"image {first!r} is listed twice, on lines {shown}")
    return paths, ids, found


def finalize_table(raw: pd.DataFrame, path: str | Path, img_dir: str | Path, *, skip_missing: bool = False,
                   check_images: bool = True) -> pd.DataFrame:
    """Validate raw rows and build the lesion table with exactly :data:`TABLE_COLUMNS`.

    Every format goes through this one function, so the rules hold for all of them: diagnosis in
    :data:`ALL_DIAGNOSES`, label 0/1 agreeing with (or derived from) the diagnosis, non-negative
    numeric thickness with lo <= hi and only on melanoma, age 0-120, known sex and site spellings,
    unique image ids, image files present.

    Args:
        raw: Raw rows (see :mod:`backend.data.formats`).
        path: The label file (named in errors, stored in ``attrs["source"]``).
        img_dir: Folder relative image names resolve against.
        skip_missing: Drop rows whose image file is missing, with one :class:`MissingImagesWarning`
            giving the count (also in ``attrs["n_skipped_missing"]``), instead of failing.
        check_images: When False, rows whose image is not found are kept (their ``image`` is the
            name joined to ``img_dir``) instead of failing or being dropped.

    Raises:
        DataFormatError: The first problem found, with file, line and field.
    """
    path = Path(path)
    cols = _Columns(raw, path)
    diagnosis, label = _labels(cols)
    lo, hi = _thickness(cols, diagnosis, label)
    age, sex, site = _metadata(cols)
    paths, ids, found = _images(cols, Path(img_dir))
    table = pd.DataFrame({
        "image": pd.Series(paths, index=raw.index, dtype="str"),
        "image_id": pd.Series(ids, index=raw.index, dtype="str"),
        "diagnosis": diagnosis, "label": label, "thickness_lo_mm": lo, "thickness_hi_mm": hi,
        "age_approx": age, "sex": sex, "anatom_site_general": site,
        **{c: cols.optional_text(c) for c in TEXT_COLUMNS},
    })
    missing = ~found
    n_missing = int(missing.sum()) if check_images else 0
    if n_missing and not skip_missing:
        names = cols.text("image")
        folder = os.path.abspath(img_dir)
        where = f"folder {folder} does not exist" if not os.path.isdir(folder) else f"not in {folder}"
        examples = ", ".join(repr(n) for n in names[missing].head(3))
        cols.fail("image", missing, f"image file {{value!r}} not found ({where}); {n_missing} of {len(raw)} rows "
                                    f"have no image file (e.g. {examples}); pass skip_missing=True "
                                    "(--skip-missing) to drop them", names, count=False)
    if n_missing:
        warnings.warn(f"{path}: skipped {n_missing} of {len(raw)} rows whose image file is missing from "
                      f"{os.path.abspath(img_dir)}", MissingImagesWarning, stacklevel=3)
        table = table[found]
    table = table.loc[:, list(TABLE_COLUMNS)].reset_index(drop=True)
    table.attrs = {"source": str(path), "n_skipped_missing": n_missing}
    return table
