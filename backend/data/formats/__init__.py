"""Load any supported label format into the one validated lesion table of :mod:`backend.data.schema`.

:func:`load_table` is the only entry point the rest of DermaLens uses. It picks a *format* from the
registry (:mod:`backend.data.formats.registry`, timm's register-by-decorator pattern: a new format
registers itself, nothing else changes), lets the format's loader turn its file(s) into *raw rows*,
and then runs the one shared validation step (:func:`backend.data.formats.validation.finalize_table`),
so that every format is checked by exactly the same rules and every error names the file, line and
field.

The package, one concept per module:

* ``registry``: :func:`register_format`, :func:`detect_format`, :func:`get_format`, :func:`list_formats`;
* ``validation``: raw rows -> lesion table, the shared rules;
* ``loader``: :func:`load_table`;
* one module per format: ``generic`` (also writes it), ``isic2019``, ``ham10000``, ``isic_archive``
  (isic-cli downloads, with the ISIC vocabulary in ``isic_terms`` and the import to a generic CSV in
  ``isic_import``).

Reading CSVs with true line numbers is :mod:`backend.data.csv_rows`; finding the image files of a
label file is :mod:`backend.data.image_paths`.

Adding a format (say, a folder with a ``labels.csv``) takes one module here, imported below::

    from backend.data.csv_rows import read_csv_rows
    from backend.data.formats.registry import register_format

    def detect(path: Path) -> bool:  # cheap: look at the header or the folder layout only
        return path.is_dir() and (path / "labels.csv").is_file()

    @register_format("my_folder", detect=detect, description="folder with labels.csv")
    def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
        raw = read_csv_rows(path / "labels.csv", required=("file",))
        ...  # rename columns to the raw-row names below, keep the "_line" column
        return raw

Raw rows, the contract between a loader and ``finalize_table``: a DataFrame with

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

# Importing a format module registers its format; detection errors list the formats in this order.
from backend.data.formats import generic, ham10000, isic2019, isic_archive  # noqa: F401
from backend.data.formats.loader import load_table
from backend.data.formats.registry import DataFormat, detect_format, get_format, list_formats, register_format
from backend.data.formats.validation import MissingImagesWarning, finalize_table
from backend.data.image_paths import default_img_dir

__all__ = [
    "DataFormat",
    "MissingImagesWarning",
    "default_img_dir",
    "detect_format",
    "finalize_table",
    "get_format",
    "list_formats",
    "load_table",
    "register_format",
]
