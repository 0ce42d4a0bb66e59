"""Load any supported label format into the one validated lesion table of :mod:`backend.data.schema`.

:func:`load_table` is the only entry point the rest of DermaLens uses. It picks a *format* from a
registry (like timm's model registry: a new format registers itself, nothing else changes), lets
the format's loader turn its file(s) into *raw rows*, and then runs the one shared validation
step, :func:`finalize_table`, so that every format is checked by exactly the same rules and every
error names the file, line and field.

Adding a format (e.g. an isic-cli download folder) takes one module::

    from backend.data.formats import read_csv_rows, read_header, register_format

    def detect(path: Path) -> bool:  # cheap: look at the header or the folder layout only
        return path.is_dir() and (path / "metadata.csv").is_file()

    def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
        raw = read_csv_rows(path / "metadata.csv", required=("isic_id",))
        ...  # rename columns to the raw-row names below, keep the "_line" column
        return raw

    register_format("isic_archive", detect, load, description="isic-cli download folder")

and the module's dotted name added to :data:`BUILTIN_FORMAT_MODULES` (imported lazily the first
time a format is looked up, so importing this module stays cheap and free of cycles).

Raw rows, the contract between a loader and :func:`finalize_table`: a DataFrame with

* ``_line``: 1-based line of the row in its file (header is line 1), for error messages;
* ``image``: the image as written (file name, stem without extension, relative or absolute path);
  optional ``image_alt``: a second name tried when ``image`` is not found (ISIC ``_downsampled``);
* any of ``diagnosis`` (ISIC code, any case), ``label`` (0/1), ``thickness_mm`` (exact),
  ``thickness_lo_mm``/``thickness_hi_mm`` (band), ``age_approx``, ``sex``,
  ``anatom_site_general`` (any spelling in :mod:`backend.data.sites`), ``lesion_id``,
  ``patient_id``, ``dataset``, ``license``, ``attribution``, as text (blank = unknown);
* optionally ``raw.attrs["sources"]``: ``{column: (file, field, line_column)}`` when a column
  comes from another file or under another name, so errors point at what the user wrote.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from backend.data.schema import ALL_DIAGNOSES, MALIGNANT_DIAGNOSES, TABLE_COLUMNS
from backend.data.sites import (
    MISSING_TOKENS,
    normalise_sexes,
    normalise_sites,
    unrecognised_sexes,
    unrecognised_sites,
)
from backend.errors import DataFormatError

#: Image file extensions tried, in order, for names given without one (same as ``backend.data.images``).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Modules whose import registers a format; imported on first use of the registry.
BUILTIN_FORMAT_MODULES: tuple[str, ...] = (
    "backend.data.isic2019",
    "backend.data.ham10000",
    "backend.data.isic_archive",  # isic-cli download folders
)
#: Name of the raw-row column holding each row's 1-based file line.
LINE = "_line"
#: Oldest plausible age, in years.
MAX_AGE = 120.0
_TEXT_COLUMNS = ("lesion_id", "patient_id", "dataset", "license", "attribution")

Detector = Callable[[Path], bool]
Loader = Callable[[Path, Path, "Path | None"], pd.DataFrame]


class MissingImagesWarning(UserWarning):
    """Rows were dropped because their image file is missing (``skip_missing=True``)."""


@dataclass(frozen=True)
class DataFormat:
    """A registered label format.

    Attributes:
        name: Registry key, also accepted as ``format=`` by :func:`load_table`.
        detect: ``detect(path) -> bool``; True when ``path`` (file or folder) is in this format.
        load: ``load(path, img_dir, metadata_csv) -> DataFrame`` of raw rows (see module docs).
        description: One line shown when auto-detection fails.
    """

    name: str
    detect: Detector
    load: Loader
    description: str = ""


_REGISTRY: dict[str, DataFormat] = {}
_builtins_loaded = False


def register_format(name: str, detect: Detector, load: Loader, *, description: str = "",
                    replace: bool = False) -> DataFormat:
    """Add a format to the registry (adapters call this at import time).

    Raises:
        ValueError: ``name`` is already registered and ``replace`` is False (two adapters fighting
            over one name is a programming error, not bad input).
    """
    if name in _REGISTRY and not replace:
        raise ValueError(f"label format {name!r} is already registered")
    fmt = DataFormat(name, detect, load, description)
    _REGISTRY[name] = fmt
    return fmt


def _ensure_builtin_formats() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_FORMAT_MODULES:
            importlib.import_module(module)


def list_formats() -> list[str]:
    """Names of the registered formats, in registration order."""
    _ensure_builtin_formats()
    return list(_REGISTRY)


def get_format(name: str, path: object = "<format>") -> DataFormat:
    """The registered format ``name``; DataFormatError (about ``path``) listing the names otherwise."""
    _ensure_builtin_formats()
    if name not in _REGISTRY:
        raise DataFormatError(path, f"unknown label format {name!r}; registered formats: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def detect_format(path: str | Path) -> str:
    """Name of the single registered format whose ``detect`` accepts ``path``.

    Raises:
        DataFormatError: The file is empty, or no format or several formats match; the message lists
            the registered formats so the user can pass ``format=`` explicitly.
    """
    _ensure_builtin_formats()
    path = Path(path)
    if path.is_file():
        _read_text(path)  # an unreadable, binary or non-UTF-8 file is named as such, not as an unknown format
    header = read_header(path) if path.is_file() else None
    if path.is_file() and header is None:
        raise DataFormatError(path, "file is empty (no CSV header line)")
    matches = [fmt.name for fmt in _REGISTRY.values() if fmt.detect(path)]
    if len(matches) == 1:
        return matches[0]
    known = "; ".join(f"{f.name} ({f.description})" if f.description else f.name for f in _REGISTRY.values())
    if not matches:
        found = f"columns found: {', '.join(header)}" if header else "a folder no format recognises"
        raise DataFormatError(path, f"cannot tell the label format ({found}); registered formats: {known}")
    raise DataFormatError(path, f"ambiguous label format: {', '.join(matches)} all match; pass format=<name> "
                                f"to choose (registered formats: {known})")


# --------------------------------------------------------------------------------------------- reading


def read_header(path: str | Path) -> list[str] | None:
    """The stripped column names of a CSV's first line, or None (not a file, empty, unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    text = head.decode("utf-8-sig", errors="replace").lstrip("\r\n")
    if not text.strip():
        return None
    try:
        row = next(csv.reader(io.StringIO(text, newline="")))
    except (csv.Error, StopIteration):
        return None
    return [c.strip() for c in row]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except OSError as e:
        raise DataFormatError(path, f"cannot read: {e.strerror or e}") from None
    if not data.strip():
        raise DataFormatError(path, "file is empty")
    utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFormatError(path, f"not UTF-8 text{utf16}: byte 0x{data[e.start]:02x} cannot be decoded; "
                                    "re-save the file as UTF-8", line=line) from None
    if "\x00" in text:  # valid UTF-8, but no CSV has NUL characters: UTF-16 without a BOM, or a binary file
        nul = text.index("\x00")
        raise DataFormatError(path, "not UTF-8 text: contains NUL bytes (it looks like UTF-16 or a binary file); "
                                    "re-save the file as UTF-8", line=text.count("\n", 0, nul) + 1)
    return text


def read_csv_rows(path: str | Path, *, required: Iterable[str] = (), any_of: Iterable[str] = ()) -> pd.DataFrame:
    """Read a UTF-8 CSV as text columns plus the 1-based file line of every row (``_line``).

    The csv module is used rather than ``pandas.read_csv`` because it reports the true file line of
    each record (quoted cells may span lines) and rows with a wrong number of fields.

    Args:
        path: The CSV file.
        required: Columns that must all be present.
        any_of: Columns of which at least one must be present.

    Raises:
        DataFormatError: Unreadable/empty/non-UTF-8 file, malformed CSV, duplicate or missing
            columns, a row with the wrong number of fields, or no data rows.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        # Blank lines before the header are skipped, as read_header (format detection) skips them.
        first = next((record for record in reader if any(c.strip() for c in record)), None)
        if first is None:
            raise DataFormatError(path, "file is empty (no CSV header line)")
        header = [c.strip() for c in first]
        header_line = end = reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in record):
                continue  # blank line or a row of empty cells
            if len(record) != len(header):
                raise DataFormatError(path, f"expected {len(header)} fields as in the header, found {len(record)}",
                                      line=start)
            rows.append(record)
            lines.append(start)
    except csv.Error as e:
        raise DataFormatError(path, f"malformed CSV: {e}", line=reader.line_num) from None
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataFormatError(path, f"column {name!r} appears twice in the header", line=header_line, field=name)
        seen.add(name)
    found = ", ".join(repr(c) for c in header)
    for name in required:
        if name not in seen:
            raise DataFormatError(path, f"missing required column {name!r}; columns found: {found}", line=header_line,
                                  field=name)
    any_of = tuple(any_of)
    if any_of and not seen.intersection(any_of):
        raise DataFormatError(path, f"needs at least one of the columns {', '.join(map(repr, any_of))}; "
                                    f"columns found: {found}", line=header_line, field=" or ".join(any_of))
    if not rows:
        raise DataFormatError(path, "has a header but no data rows")
    raw = pd.DataFrame(rows, columns=header, dtype="str")
    raw[LINE] = np.asarray(lines, dtype=np.int64)
    return raw


def raise_for_rows(raw: pd.DataFrame, mask: object, path: object, field: str | None, message: str,
                   values: pd.Series | None = None, line_column: str = LINE, count: bool = True) -> None:
    """Raise a DataFormatError about the first row where ``mask`` is true, if any.

    Args:
        raw: The raw rows (for their line numbers).
        mask: Boolean per row: which rows are bad.
        path: File the rows come from.
        field: Column at fault, as the user wrote it.
        message: What is wrong; ``{value!r}`` is replaced by the first bad row's entry of ``values``.
        values: The column the message quotes.
        line_column: Column of ``raw`` holding the file lines.
        count: Append how many more rows have the same problem.
    """
    bad = np.asarray(mask, dtype=bool)
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    text = message.format(value=None if values is None else values.iloc[pos])
    if count and (n := int(bad.sum())) > 1:
        text += f" ({n - 1} more row{'s' if n > 2 else ''} like this)"
    line = raw[line_column].iloc[pos]
    raise DataFormatError(path, text, line=None if pd.isna(line) else int(line), field=field)


# ------------------------------------------------------------------------------------------ validation


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
        text = self.text(column)
        return text.mask(text == "")


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


class _FolderIndex:
    """Each folder is listed once (``os.scandir``) and names looked up in memory: fast for 25k rows."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[str, set[str], dict[str, str]]] = {}

    def _listing(self, folder: str) -> tuple[str, set[str], dict[str, str]]:
        if folder not in self._folders:
            names: set[str] = set()
            try:
                with os.scandir(folder) as it:
                    names = {e.name for e in it if e.is_file()}
            except OSError:
                pass
            self._folders[folder] = (os.path.realpath(folder), names, {n.lower(): n for n in names})
        return self._folders[folder]

    def find(self, img_dir: str, name: str) -> str | None:
        """Absolute path of ``name`` (with or without extension, case-insensitive fallback) or None."""
        folder, base = os.path.split(os.path.join(img_dir, name))
        real, names, lower = self._listing(folder)
        candidates = [base]
        if not base.lower().endswith(IMAGE_EXTENSIONS):
            candidates += [base + ext for ext in IMAGE_EXTENSIONS]
        for cand in candidates:
            if cand in names:
                return os.path.join(real, cand)
        for cand in candidates:
            if cand.lower() in lower:
                return os.path.join(real, lower[cand.lower()])
        return None


def _image_id(name: str) -> str:
    base = os.path.basename(name)
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base


def _images(cols: _Columns, img_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(image path, image_id, found mask); duplicate ids and unsupported file types are errors."""
    names = cols.text("image")
    cols.fail("image", names == "", "image name is blank")
    alts = cols.text("image_alt").tolist()
    index, folder = _FolderIndex(), os.path.abspath(img_dir)
    paths, ids, found = [], [], np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names.tolist()):
        hit = index.find(folder, name) or (index.find(folder, alts[i]) if alts[i] else None)
        found[i] = hit is not None
        paths.append(hit or os.path.normpath(os.path.join(folder, name)))
        ids.append(_image_id(hit or name))
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
        raw: Raw rows (see the module docstring).
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
        **{c: cols.optional_text(c) for c in _TEXT_COLUMNS},
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


# --------------------------------------------------------------------------------------- generic CSV

_GENERIC_COLUMNS = ("image", "diagnosis", "label", "thickness_mm", "thickness_lo_mm", "thickness_hi_mm",
                    "age_approx", "sex", "anatom_site_general", *_TEXT_COLUMNS)


def detect_generic(path: Path) -> bool:
    """A CSV with an ``image`` column and a ``label`` and/or ``diagnosis`` column."""
    header = read_header(path) if path.is_file() else None
    return bool(header) and "image" in header and bool({"label", "diagnosis"} & set(header))


def load_generic(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
    """Raw rows of a generic CSV (``thickness`` is accepted for ``thickness_mm``; other columns ignored)."""
    if metadata_csv is not None:
        raise DataFormatError(metadata_csv, "the generic CSV format takes no separate metadata file: put "
                                            "age_approx, sex, anatom_site_general... in the CSV itself")
    raw = read_csv_rows(path, required=("image",), any_of=("label", "diagnosis"))
    sources = {}
    if "thickness" in raw.columns:
        if "thickness_mm" in raw.columns:
            raise DataFormatError(path, "has both 'thickness' and 'thickness_mm' columns; keep one", line=1,
                                  field="thickness")
        raw = raw.rename(columns={"thickness": "thickness_mm"})
        sources["thickness_mm"] = (path, "thickness", LINE)
    raw = raw[[c for c in (*_GENERIC_COLUMNS, LINE) if c in raw.columns]]
    raw.attrs["sources"] = sources
    return raw


register_format("generic", detect_generic, load_generic,
                description="CSV with image and label and/or diagnosis (+ thickness, metadata)")


# ------------------------------------------------------------------------------------------ entry point


def default_img_dir(path: str | Path) -> Path:
    """``images/`` beside the label file (or inside the folder) when it exists, else that folder."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    return base / "images" if (base / "images").is_dir() else base


def load_table(path: str | Path, img_dir: str | Path | None = None, format: str = "auto",
               metadata_csv: str | Path | None = None, skip_missing: bool = False,
               check_images: bool = True) -> pd.DataFrame:
    """Load a label file (or download folder) of any registered format into the lesion table.

    Args:
        path: Label CSV, or a folder for folder-based formats.
        img_dir: Folder of the images; default :func:`default_img_dir`.
        format: A registered format name, or ``auto`` to detect it from the header/layout.
        metadata_csv: Extra metadata file for formats that have one (ISIC 2019).
        skip_missing: Drop rows whose image file is missing, with one warning and a count.
        check_images: Require image files to exist (see :func:`finalize_table`).

    Returns:
        DataFrame with exactly :data:`backend.data.schema.TABLE_COLUMNS`; ``attrs`` holds
        ``source``, ``format`` and ``n_skipped_missing``.

    Raises:
        DataFormatError: Bad input, naming file, line and field.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "no such file or folder")
    name = detect_format(path) if format in (None, "", "auto") else format
    fmt = get_format(name, path)
    img = Path(img_dir) if img_dir not in (None, "") else default_img_dir(path)
    meta = Path(metadata_csv) if metadata_csv not in (None, "") else None
    raw = fmt.load(path, img, meta)
    table = finalize_table(raw, path, img, skip_missing=skip_missing, check_images=check_images)
    table.attrs["format"] = fmt.name
    return table
