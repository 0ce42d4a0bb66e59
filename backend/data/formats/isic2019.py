"""ISIC 2019 challenge training labels: the one-hot ground truth plus its metadata CSV.

``ISIC_2019_Training_GroundTruth.csv`` has ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`` with exactly
one 1 per row; ``ISIC_2019_Training_Metadata.csv`` (``image,age_approx,anatom_site_general,
lesion_id,sex``) is taken from ``metadata_csv`` or found beside the ground truth, and joined by
image id. Without it the rows simply have no metadata.

Some ISIC 2019 image ids end in ``_downsampled`` (images the challenge shipped reduced): the file
is looked up under that name first and then without the suffix (how other copies name it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from backend.data.csv_rows import LINE, raise_for_rows, read_csv_rows, read_header
from backend.data.formats.registry import register_format
from backend.data.schema import ALL_DIAGNOSES, DIAGNOSES
from backend.errors import DataFormatError

#: Metadata file name looked for beside the ground truth.
METADATA_FILENAME = "ISIC_2019_Training_Metadata.csv"
DOWNSAMPLED_SUFFIX = "_downsampled"
METADATA_COLUMNS = ("age_approx", "anatom_site_general", "lesion_id", "sex")
DATASET = "ISIC2019"
LICENSE = "CC BY-NC 4.0"
ATTRIBUTION = ("ISIC 2019 challenge: BCN_20000 (Hospital Clinic de Barcelona), HAM10000 (ViDIR Group, "
               "Medical University of Vienna), MSK dataset")
_META_LINE = "_meta_line"


def detect(path: Path) -> bool:
    """A CSV with ``image`` and the eight one-hot diagnosis columns MEL..SCC."""
    header = read_header(path) if path.is_file() else None
    return bool(header) and "image" in header and set(DIAGNOSES) <= set(header)


def strip_downsampled(ids: pd.Series) -> pd.Series:
    """Image ids without their ``_downsampled`` suffix."""
    return ids.str.removesuffix(DOWNSAMPLED_SUFFIX)


def _diagnoses(gt: pd.DataFrame, path: Path) -> pd.Series:
    """The diagnosis of each one-hot row; every cell must be 0 or 1 and each row have exactly one 1."""
    columns = [c for c in ALL_DIAGNOSES if c in gt.columns]
    hot = {}
    for col in columns:
        text = gt[col].str.strip()
        value = pd.to_numeric(text, errors="coerce")
        raise_for_rows(gt, ~value.isin([0.0, 1.0]), path, col, "one-hot cell must be 0 or 1, got {value!r}", text)
        hot[col] = value.to_numpy() == 1.0
    onehot = np.column_stack([hot[c] for c in columns])
    count = onehot.sum(axis=1)
    bad = count != 1
    if bad.any():
        row = onehot[int(np.flatnonzero(bad)[0])]
        named = [c for c, on in zip(columns, row, strict=True) if on]
        field = "+".join(named) if named else f"{columns[0]}..{columns[-1]}"
        found = f"found {len(named)} ({', '.join(named)})" if named else "found none"
        raise_for_rows(gt, bad, path, field, f"expected exactly one 1 among {', '.join(columns)}, {found}")
    return pd.Series(np.asarray(columns)[onehot.argmax(axis=1)], index=gt.index, dtype="str")


def _metadata(path: Path, metadata_csv: Path | None) -> tuple[Path | None, pd.DataFrame | None]:
    """The metadata rows keyed by image id without suffix (``_key``), or (None, None) when absent."""
    if metadata_csv is None:
        beside = path.parent / METADATA_FILENAME
        if not beside.is_file():
            return None, None
        metadata_csv = beside
    meta = read_csv_rows(metadata_csv, required=("image",))
    meta["_key"] = strip_downsampled(meta["image"].str.strip())
    repeat = meta["_key"].duplicated(keep="first")
    if repeat.any():
        key = meta["_key"][repeat].iloc[0]
        lines = " and ".join(str(x) for x in meta[LINE][meta["_key"] == key].head(2))
        raise_for_rows(meta, repeat, metadata_csv, "image", f"image {key!r} has two metadata rows, lines {lines}")
    keep = [c for c in METADATA_COLUMNS if c in meta.columns]
    meta = meta[["_key", *keep, LINE]].rename(columns={LINE: _META_LINE})
    return metadata_csv, meta


@register_format("isic2019", detect=detect,
                 description="ISIC 2019 one-hot ground truth image,MEL..UNK (+ ISIC_2019_Training_Metadata.csv)")
def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame:
    """Raw rows of an ISIC 2019 ground truth joined with its metadata."""
    if metadata_csv is not None and not metadata_csv.is_file():
        raise DataFormatError(metadata_csv, "metadata file not found")
    gt = read_csv_rows(path, required=("image", *DIAGNOSES))
    image = gt["image"].str.strip()
    raw = pd.DataFrame({
        LINE: gt[LINE],
        "image": image,
        "image_alt": strip_downsampled(image).where(image.str.endswith(DOWNSAMPLED_SUFFIX), ""),
        "diagnosis": _diagnoses(gt, path),
        "dataset": DATASET,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
    })
    sources: dict[str, tuple[object, str, str]] = {"diagnosis": (path, "MEL..UNK", LINE)}
    meta_path, meta = _metadata(path, metadata_csv)
    if meta is not None:
        raw["_key"] = strip_downsampled(image)
        raw = raw.merge(meta, how="left", on="_key", validate="many_to_one").drop(columns="_key")
        sources.update({c: (meta_path, c, _META_LINE) for c in METADATA_COLUMNS})
    raw.attrs["sources"] = sources
    return raw
