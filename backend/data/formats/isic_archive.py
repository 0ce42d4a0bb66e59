"""ISIC Archive downloads made by ``isic-cli``: a folder of ``ISIC_xxxxxxx.jpg`` plus ``metadata.csv``.

``isic image download [--search QUERY] [--collections IDS] DIR`` writes each image as
``DIR/<isic_id>.jpg``, ``DIR/metadata.csv`` (``isic_id, attribution, copyright_license``, then every
acquisition and clinical field of the downloaded images in sorted order), ``DIR/attribution.txt`` and
``DIR/licenses/``. Format ``isic_archive`` reads such a folder, or its ``metadata.csv``, as it is.

Diagnosis (:data:`backend.data.formats.isic_terms.DIAGNOSIS_TERMS`, one table, any case): a row
takes the code of its most specific field whose value the table knows, in the order ``diagnosis_3``,
``diagnosis_2``, legacy ``diagnosis``, ``diagnosis_1`` (``diagnosis_4``/``_5`` only refine a
``diagnosis_3`` term and never change its code). Terms that are none of MEL..SCC map to
:data:`OTHER`: such a row is UNK when benign and has no diagnosis (label 1) when malignant,
malignancy taken from ``benign_malignant`` (``indeterminate/benign`` counts as benign,
``indeterminate/malignant`` as malignant), else from
``diagnosis_1``. A value the table does not know is never dropped silently: all of them are listed
with their counts in one :class:`UnknownDiagnosisWarning` (``strict=True``: a DataFormatError naming
line and field) and the row is treated like an :data:`OTHER` term. Rows whose malignancy stays
unknown (``Indeterminate``, blank) are dropped with a count (:class:`SkippedRowsWarning`); a row
with no diagnosis value at all keeps only its label. ``benign_malignant`` contradicting a mapped
code is an error (except AK, which ISIC files under "Indeterminate").

Thickness: ``mel_thick_mm`` is the exact Breslow thickness; melanoma in situ (``diagnosis_3`` or
legacy ``mel_class``) is 0.0 even when blank, and an error with a positive thickness. Thickness on
a non-melanoma is an error (the shared rule of :func:`backend.data.formats.validation.finalize_table`).

Rows whose ``image_type`` is set and not ``dermoscopic`` (clinical, TBP tiles...) are skipped with
a count unless ``keep_non_dermoscopic``. Sites come from ``anatom_site_general``, else from the most
specific of ``anatom_site_3``, ``_2``, ``_1`` that maps (:data:`HIERARCHICAL_SITE_ALIASES` first,
then :mod:`backend.data.sites`). Images are looked up in ``img_dir`` first, then in the download folder.
:func:`load_isic_archive` takes the options ``load_table`` cannot pass; ``backend.data.formats.isic_import``
writes a download as a generic CSV.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from backend.data.csv_rows import LINE, raise_for_rows, read_csv_rows, read_header
from backend.data.formats.isic_terms import (
    BENIGN_MALIGNANT,
    DIAGNOSIS_1_LABELS,
    DIAGNOSIS_MAP,
    HIERARCHICAL_SITE_ALIASES,
    IN_SITU_CLASSES,
    OTHER,
)
from backend.data.formats.registry import register_format
from backend.data.formats.validation import finalize_table
from backend.data.image_paths import default_img_dir
from backend.data.schema import ALL_DIAGNOSES, MALIGNANT_DIAGNOSES
from backend.data.sites import MISSING_TOKENS, SITE_ALIASES
from backend.errors import DataFormatError

#: The download's metadata file, beside the images.
METADATA_FILENAME = "metadata.csv"
#: First columns of every isic-cli ``metadata.csv`` (the rest follow in sorted order).
BASE_COLUMNS = ("isic_id", "attribution", "copyright_license")
DATASET = "ISIC Archive"
#: Fields read for the diagnosis, most specific first.
DIAGNOSIS_FIELDS = ("diagnosis_3", "diagnosis_2", "diagnosis", "diagnosis_1")


class IsicArchiveWarning(UserWarning):
    """Something in an ISIC Archive download was skipped or guessed; the message gives counts."""


class UnknownDiagnosisWarning(IsicArchiveWarning):
    """Diagnosis values not in :data:`DIAGNOSIS_MAP` (each listed with its count)."""


class SkippedRowsWarning(IsicArchiveWarning):
    """Rows left out: non-dermoscopic images, or malignancy unknown."""


def metadata_file(path: str | Path) -> Path:
    """``metadata.csv`` of a download folder (or the file itself when ``path`` is a file)."""
    path = Path(path)
    return path / METADATA_FILENAME if path.is_dir() else path


def detect(path: Path) -> bool:
    """A folder with a ``metadata.csv`` (or that CSV) whose header starts ``isic_id,attribution,copyright_license``."""
    file = metadata_file(path)
    header = read_header(file) if file.is_file() else None
    return bool(header) and tuple(header[: len(BASE_COLUMNS)]) == BASE_COLUMNS


def _text(meta: pd.DataFrame, column: str) -> pd.Series:
    if column not in meta.columns:
        return pd.Series("", index=meta.index, dtype="str")
    return meta[column].astype("str").fillna("").str.strip()


def _blank(values: pd.Series) -> pd.Series:
    return values.str.lower().isin(MISSING_TOKENS)


def _check_ids(meta: pd.DataFrame, csv: Path) -> pd.Series:
    ids = _text(meta, "isic_id")
    raise_for_rows(meta, ids == "", csv, "isic_id", "isic_id is blank")
    repeat = ids.duplicated(keep="first")
    if repeat.any():
        first = ids[repeat].iloc[0]
        lines = " and ".join(str(x) for x in meta.loc[ids == first, LINE].head(2))
        raise_for_rows(meta, repeat, csv, "isic_id", f"image {first!r} is listed twice, on lines {lines}")
    return ids


def _diagnoses(meta: pd.DataFrame, csv: Path, strict: bool) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(code or NA, term the code came from, any diagnosis value given) per row; unknown values reported."""
    code = pd.Series(pd.NA, index=meta.index, dtype="object")
    term = pd.Series("", index=meta.index, dtype="str")
    given = pd.Series(False, index=meta.index)
    unknown: Counter[tuple[str, str]] = Counter()
    first_bad: tuple[int, str, str] | None = None
    for field in DIAGNOSIS_FIELDS:
        values = _text(meta, field)
        present = ~_blank(values)
        mapped = values.str.lower().map(DIAGNOSIS_MAP)
        take = code.isna() & mapped.notna()
        code[take], term[take] = mapped[take], values[take]
        given |= present
        bad = present & mapped.isna()
        unknown.update(zip([field] * int(bad.sum()), values[bad], strict=True))
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            line = int(meta[LINE].iloc[pos])
            if first_bad is None or line < first_bad[0]:
                first_bad = (line, field, values.iloc[pos])
    if unknown:
        listed = "; ".join(f"{field} {value!r} x {n}" for (field, value), n in unknown.most_common())
        if strict:
            line, field, value = first_bad
            raise DataFormatError(csv, f"unknown ISIC diagnosis {value!r} (not in backend.data.formats."
                                       f"isic_terms.DIAGNOSIS_TERMS); all unknown values: {listed}", line=line,
                                  field=field)
        warnings.warn(f"{csv}: {sum(unknown.values())} diagnosis values are not in the ISIC mapping table "
                      f"(backend.data.formats.isic_terms.DIAGNOSIS_TERMS): {listed}. Such a row takes its diagnosis "
                      "from a less specific field that maps, else is UNK (benign) / no diagnosis (malignant) by "
                      "benign_malignant or diagnosis_1, else is dropped", UnknownDiagnosisWarning, stacklevel=4)
    return code, term, given


def _malignancy(meta: pd.DataFrame, csv: Path) -> tuple[pd.Series, pd.Series]:
    """(label from benign_malignant, label from diagnosis_1), NaN where not stated."""
    bm = _text(meta, "benign_malignant")
    bm_key = bm.str.lower()
    raise_for_rows(meta, ~_blank(bm) & ~bm_key.isin(BENIGN_MALIGNANT.keys()), csv, "benign_malignant",
                   f"unknown benign_malignant value {{value!r}} (expected {', '.join(BENIGN_MALIGNANT)} or blank)", bm)
    from_bm = bm_key.map(BENIGN_MALIGNANT).astype("float64")
    from_d1 = _text(meta, "diagnosis_1").str.lower().map(DIAGNOSIS_1_LABELS).astype("float64")
    return from_bm, from_d1


def _labels(meta: pd.DataFrame, csv: Path, code: pd.Series, term: pd.Series, given: pd.Series) -> tuple[
        pd.Series, pd.Series]:
    """(diagnosis code or "", label text or "") per row; rows that cannot be labelled get label NaN."""
    from_bm, from_d1 = _malignancy(meta, csv)
    strict_bm = _text(meta, "benign_malignant").str.lower().isin(("benign", "malignant"))
    known = code.notna() & (code != OTHER)
    malignant = code.isin(MALIGNANT_DIAGNOSES)
    contradicts = known & (code != "AK") & strict_bm & (from_bm != malignant.astype("float64"))
    raise_for_rows(meta, contradicts, csv, "benign_malignant", "{value}",
                   "benign_malignant " + _text(meta, "benign_malignant") + " contradicts the diagnosis '" + term
                   + "' (" + code.astype("str") + ")")
    label = from_bm.fillna(from_d1).where(~known)
    diagnosis = code.where(known, "")
    diagnosis = diagnosis.mask(~known & given & (label == 0), "UNK")
    text = label.map(lambda v: "" if pd.isna(v) else str(int(v)))
    return diagnosis.astype("str"), text.where(~known, "")


def _thickness(meta: pd.DataFrame, csv: Path, diagnosis: pd.Series) -> pd.Series:
    """``mel_thick_mm`` as text, with in situ melanoma set to 0.0 (positive thickness there is an error)."""
    thick = _text(meta, "mel_thick_mm")
    blank = _blank(thick)
    value = pd.to_numeric(thick.mask(blank), errors="coerce")
    in_situ = _text(meta, "mel_class").str.lower().isin(IN_SITU_CLASSES)
    for field in ("diagnosis_3", "diagnosis_4", "diagnosis_5"):
        in_situ |= _text(meta, field).str.lower().str.startswith("melanoma in situ")
    in_situ &= diagnosis == "MEL"
    raise_for_rows(meta, in_situ & (value > 0), csv, "mel_thick_mm",
                   "melanoma in situ has no Breslow thickness (in situ = 0.0 mm), but mel_thick_mm is {value!r}",
                   thick)
    return thick.mask(in_situ & blank, "0.0")


def _sites(meta: pd.DataFrame, csv: Path) -> pd.Series:
    """Normalised site text: ``anatom_site_general``, else the most specific ``anatom_site_3..1`` that maps."""

    def lookup(values: pd.Series) -> pd.Series:
        key = values.str.lower()
        return key.map(HIERARCHICAL_SITE_ALIASES).fillna(key.map(SITE_ALIASES))

    out = pd.Series(pd.NA, index=meta.index, dtype="object")
    for field in ("anatom_site_general", "anatom_site_3", "anatom_site_2", "anatom_site_1"):
        values = _text(meta, field)
        mapped = lookup(values)
        if field in ("anatom_site_general", "anatom_site_1"):  # finer levels only refine anatom_site_1
            raise_for_rows(meta, out.isna() & ~_blank(values) & mapped.isna(), csv, field,
                           "unknown anatomical site {value!r} (see backend.data.sites.SITE_ALIASES and "
                           "backend.data.formats.isic_terms.HIERARCHICAL_SITE_ALIASES; blank or 'unknown' = "
                           "missing)", values)
        out = out.fillna(mapped)
    return out.fillna("").astype("str")


def read_isic_rows(path: str | Path, *, keep_non_dermoscopic: bool = False, strict: bool = False) -> pd.DataFrame:
    """Raw rows (see :mod:`backend.data.formats`) of an isic-cli folder or its ``metadata.csv``.

    Args:
        path: The download folder, or its ``metadata.csv``.
        keep_non_dermoscopic: Keep rows whose ``image_type`` is not ``dermoscopic``.
        strict: Unknown diagnosis values are an error instead of a warning.

    Returns:
        Raw rows; ``attrs["isic_archive"]`` holds the counts of skipped rows and unknown values.

    Raises:
        DataFormatError: Missing columns, duplicate or blank ids, bad values, or no row left.
    """
    csv = metadata_file(path)
    folder = csv.parent.resolve()
    meta = read_csv_rows(csv, required=BASE_COLUMNS, any_of=(*DIAGNOSIS_FIELDS, "benign_malignant"))
    if tuple(meta.columns[: len(BASE_COLUMNS)]) != BASE_COLUMNS:
        raise DataFormatError(csv, f"not an isic-cli metadata.csv: the header must start with {','.join(BASE_COLUMNS)}",
                              line=1)
    n_rows = len(meta)
    _check_ids(meta, csv)
    image_type = _text(meta, "image_type")
    other_type = ~_blank(image_type) & (image_type.str.lower() != "dermoscopic")
    skipped_types = Counter(image_type[other_type]) if not keep_non_dermoscopic else Counter()
    if skipped_types:
        meta = meta[~other_type.to_numpy()]
        listed = ", ".join(f"{kind!r} x {n}" for kind, n in skipped_types.most_common())
        warnings.warn(f"{csv}: skipped {sum(skipped_types.values())} of {n_rows} rows whose image_type is not "
                      f"dermoscopic ({listed}); pass keep_non_dermoscopic=True (--keep-non-dermoscopic) to keep them",
                      SkippedRowsWarning, stacklevel=3)
    code, term, given = _diagnoses(meta, csv, strict)
    diagnosis, label = _labels(meta, csv, code, term, given)
    unlabelled = ((diagnosis == "") & (label == "")).to_numpy()
    if unlabelled.any():
        warnings.warn(f"{csv}: dropped {int(unlabelled.sum())} rows whose diagnosis is none of "
                      f"{', '.join(ALL_DIAGNOSES[:-1])} and whose malignancy is not stated (benign_malignant and "
                      "diagnosis_1 blank or indeterminate)", SkippedRowsWarning, stacklevel=3)
        meta, diagnosis, label = meta[~unlabelled], diagnosis[~unlabelled], label[~unlabelled]
    if meta.empty:
        raise DataFormatError(csv, f"no usable row: all {n_rows} rows were skipped (see the warnings)")
    ids = _text(meta, "isic_id")
    raw = pd.DataFrame({
        LINE: meta[LINE],
        "image": ids,
        "image_alt": str(folder) + os.sep + ids,
        "diagnosis": diagnosis,
        "label": label,
        "thickness_mm": _thickness(meta, csv, diagnosis),
        "age_approx": _text(meta, "age_approx"),
        "sex": _text(meta, "sex"),
        "anatom_site_general": _sites(meta, csv),
        "lesion_id": _text(meta, "lesion_id"),
        "patient_id": _text(meta, "patient_id"),
        "dataset": DATASET,
        "license": _text(meta, "copyright_license"),
        "attribution": _text(meta, "attribution"),
    })
    label_field = "benign_malignant" if "benign_malignant" in meta.columns else "diagnosis_1"
    raw.attrs["sources"] = {
        **{c: (csv, c, LINE) for c in raw.columns if c != LINE},
        "image": (csv, "isic_id", LINE), "label": (csv, label_field, LINE),
        "diagnosis": (csv, "/".join(f for f in DIAGNOSIS_FIELDS if f in meta.columns), LINE),
        "thickness_mm": (csv, "mel_thick_mm", LINE), "license": (csv, "copyright_license", LINE),
    }
    raw.attrs["isic_archive"] = {
        "n_rows": n_rows,
        "n_skipped_non_dermoscopic": sum(skipped_types.values()),
        "n_dropped_unlabelled": int(unlabelled.sum()),
    }
    return raw.reset_index(drop=True)


@register_format("isic_archive", detect=detect,
                 description="isic-cli download folder: metadata.csv (isic_id,attribution,copyright_license,...) "
                             "+ ISIC_xxxxxxx.jpg")
def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
    """Registry loader: :func:`read_isic_rows` with defaults (non-dermoscopic skipped, unknown terms warned)."""
    if metadata_csv is not None:
        raise DataFormatError(metadata_csv, "an isic-cli download keeps its metadata in its own metadata.csv: "
                                            "pass no metadata_csv")
    return read_isic_rows(path)



def load_isic_archive(path: str | Path, img_dir: str | Path | None = None, *, keep_non_dermoscopic: bool = False,
                      strict: bool = False, skip_missing: bool = False, check_images: bool = True) -> pd.DataFrame:
    """Load an isic-cli download into the lesion table, with the options ``load_table`` cannot pass.

    Args:
        path: The download folder, or its ``metadata.csv``.
        img_dir: Folder searched for the images first (e.g. a resized cache); default the download folder.
        keep_non_dermoscopic: Keep rows whose ``image_type`` is not ``dermoscopic``.
        strict: Unknown diagnosis values are an error instead of a warning.
        skip_missing: Drop rows whose image file is missing, with one warning and a count.
        check_images: Require image files to exist.

    Returns:
        The table; ``attrs`` holds ``source``, ``format``, ``n_skipped_missing`` and the counts of
        :func:`read_isic_rows`.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "no such file or folder")
    raw = read_isic_rows(path, keep_non_dermoscopic=keep_non_dermoscopic, strict=strict)
    img = Path(img_dir) if img_dir not in (None, "") else default_img_dir(path)
    table = finalize_table(raw, path, img, skip_missing=skip_missing, check_images=check_images)
    table.attrs.update(format="isic_archive", **raw.attrs["isic_archive"])
    return table
