"""Import an isic-cli download as a generic CSV (what ``scripts/import_isic.py`` runs), and describe it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.data.formats.generic import write_generic_csv
from backend.data.formats.isic_archive import load_isic_archive, metadata_file
from backend.errors import DataFormatError


def import_isic_archive(path: str | Path, output: str | Path, **options: object) -> pd.DataFrame:
    """Load an isic-cli download (:func:`load_isic_archive` options) and write it as a generic CSV."""
    output = Path(output)
    if output.resolve() == metadata_file(path).resolve():
        raise DataFormatError(output, "refusing to overwrite the download's own metadata.csv; choose another file")
    table = load_isic_archive(path, **options)
    write_generic_csv(table, output)
    return table


def describe(table: pd.DataFrame) -> str:
    """One line per fact of an imported table: rows per diagnosis, thickness labels, skipped rows."""
    counts = table["diagnosis"].fillna("none").value_counts()
    thick = table["thickness_lo_mm"].notna()
    lines = [
        f"{len(table)} images: " + ", ".join(f"{code} {n}" for code, n in counts.items())
        + f" ({int(table['label'].sum())} malignant)",
        f"Breslow thickness on {int(thick.sum())} melanomas ({int((thick & (table['thickness_hi_mm'] == 0)).sum())} "
        "in situ)",
    ]
    skipped = {k: table.attrs.get(k, 0) for k in ("n_skipped_non_dermoscopic", "n_dropped_unlabelled",
                                                   "n_skipped_missing")}
    if any(skipped.values()):
        lines.append("skipped: " + ", ".join(f"{k.removeprefix('n_').replace('_', ' ')} {v}"
                                             for k, v in skipped.items() if v))
    return "\n".join(lines)
