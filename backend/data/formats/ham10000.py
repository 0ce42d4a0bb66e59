"""HAM10000 metadata (``HAM10000_metadata.csv``): ``lesion_id,image_id,dx,dx_type,age,sex,localization``.

``dx`` codes map to ISIC 2019 diagnoses; any other code is an error, never a silent drop.
``akiec`` ("actinic keratoses and intraepithelial carcinoma / Bowen's disease") maps to AK, the
only choice this file supports; but ISIC 2019 relabelled the Bowen's cases (197 of the 327 akiec
images) as SCC, malignant. Where that matters, load the same images through the ISIC 2019 ground
truth (or ``labels.csv``) instead.
``localization`` is normalised by :mod:`backend.data.sites` (``back`` -> posterior torso, ``trunk``
-> torso, ...). ``dx_type`` (how the diagnosis was confirmed) is not part of the table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.data.csv_rows import LINE, raise_for_rows, read_csv_rows, read_header
from backend.data.formats.registry import register_format
from backend.errors import DataFormatError

#: HAM10000 ``dx`` code -> ISIC 2019 diagnosis.
DX_CODES: dict[str, str] = {
    "akiec": "AK",
    "bcc": "BCC",
    "bkl": "BKL",
    "df": "DF",
    "mel": "MEL",
    "nv": "NV",
    "vasc": "VASC",
}
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
DATASET = "HAM10000"
LICENSE = "CC BY-NC 4.0"
ATTRIBUTION = "ViDIR Group, Department of Dermatology, Medical University of Vienna (Tschandl et al. 2018)"


def detect(path: Path) -> bool:
    """A CSV with HAM10000's ``lesion_id``, ``image_id`` and ``dx`` columns."""
    header = read_header(path) if path.is_file() else None
    return bool(header) and set(REQUIRED_COLUMNS) <= set(header)


@register_format("ham10000", detect=detect, description="HAM10000_metadata.csv: lesion_id,image_id,dx,...")
def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
    """Raw rows of a HAM10000 metadata file (its metadata is in the same file)."""
    if metadata_csv is not None:
        raise DataFormatError(metadata_csv, "HAM10000 metadata is in the label file itself: pass no metadata_csv")
    ham = read_csv_rows(path, required=REQUIRED_COLUMNS)
    dx = ham["dx"].str.strip().str.lower()
    raise_for_rows(ham, ~dx.isin(DX_CODES.keys()), path, "dx",
                   f"unknown dx code {{value!r}} (expected one of {', '.join(DX_CODES)})", ham["dx"])

    def column(name: str) -> pd.Series:
        return ham[name] if name in ham.columns else pd.Series("", index=ham.index, dtype="str")

    raw = pd.DataFrame({
        LINE: ham[LINE],
        "image": ham["image_id"],
        "diagnosis": dx.map(DX_CODES),
        "age_approx": column("age"),
        "sex": column("sex"),
        "anatom_site_general": column("localization"),
        "lesion_id": ham["lesion_id"],
        "dataset": DATASET,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
    })
    raw.attrs["sources"] = {
        "image": (path, "image_id", LINE),
        "diagnosis": (path, "dx", LINE),
        "age_approx": (path, "age", LINE),
        "anatom_site_general": (path, "localization", LINE),
    }
    return raw
