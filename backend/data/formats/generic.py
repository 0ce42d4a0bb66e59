"""The generic CSV format: one row per image with the lesion table's own column names.

``image`` and a ``label`` and/or ``diagnosis`` column are required; ``thickness_mm`` (or ``thickness``),
``thickness_lo_mm``/``thickness_hi_mm``, ``age_approx``, ``sex``, ``anatom_site_general``,
``lesion_id``, ``patient_id``, ``dataset``, ``license`` and ``attribution`` are read when present, any
other column is ignored. :func:`write_generic_csv` writes any lesion table in this format, so a table
imported from another source (``scripts/import_isic.py``) reads back identically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from backend.data.csv_rows import LINE, read_csv_rows, read_header
from backend.data.formats.registry import register_format
from backend.data.formats.validation import TEXT_COLUMNS
from backend.data.image_paths import default_img_dir
from backend.errors import DataFormatError

#: Columns of a generic CSV: read by format ``generic`` and written by :func:`write_generic_csv`.
GENERIC_COLUMNS = ("image", "diagnosis", "label", "thickness_mm", "thickness_lo_mm", "thickness_hi_mm",
                   "age_approx", "sex", "anatom_site_general", *TEXT_COLUMNS)


def detect(path: Path) -> bool:
    """A CSV with an ``image`` column and a ``label`` and/or ``diagnosis`` column."""
    header = read_header(path) if path.is_file() else None
    return bool(header) and "image" in header and bool({"label", "diagnosis"} & set(header))


@register_format("generic", detect=detect,
                 description="CSV with image and label and/or diagnosis (+ thickness, metadata)")
def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
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
    raw = raw[[c for c in (*GENERIC_COLUMNS, LINE) if c in raw.columns]]
    raw.attrs["sources"] = sources
    return raw


def write_generic_csv(table: pd.DataFrame, output: str | Path) -> Path:
    """Write a lesion table as a generic CSV that ``load_table(output)`` reads back to an equal table.

    Image paths are written relative to the folder ``load_table`` resolves them against by default
    (the CSV's folder, or its ``images/`` subfolder when there is one) when the image is inside it,
    absolute otherwise. Exact thickness goes to ``thickness_mm``, bands to ``thickness_lo_mm/_hi_mm``.
    """
    output = Path(output)
    if output.is_dir():
        raise DataFormatError(output, "is a folder; give the CSV file to write, e.g. labels.csv")
    output.parent.mkdir(parents=True, exist_ok=True)
    base = os.path.realpath(default_img_dir(output))

    def relative(image: str) -> str:
        try:
            rel = os.path.relpath(image, base)
        except ValueError:  # another drive (Windows)
            return image
        return image if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel

    lo, hi = table["thickness_lo_mm"], table["thickness_hi_mm"]
    exact = lo.notna() & (lo == hi)
    out = pd.DataFrame({
        "image": [relative(p) for p in table["image"]],
        "diagnosis": table["diagnosis"],
        "label": table["label"].astype("int64"),
        "thickness_mm": lo.where(exact),
        "thickness_lo_mm": lo.where(~exact),
        "thickness_hi_mm": hi.where(~exact & np.isfinite(hi)),
        **{c: table[c] for c in GENERIC_COLUMNS[6:]},
    })
    out.to_csv(output, index=False)
    return output
