"""The entry point: load a label file (or download folder) of any registered format into the lesion table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.data.formats.registry import detect_format, get_format
from backend.data.formats.validation import finalize_table
from backend.data.image_paths import default_img_dir
from backend.errors import DataFormatError


def load_table(path: str | Path, img_dir: str | Path | None = None, format: str = "auto",
               metadata_csv: str | Path | None = None, skip_missing: bool = False,
               check_images: bool = True) -> pd.DataFrame:
    """Load a label file (or download folder) of any registered format into the lesion table.

    Args:
        path: Label CSV, or a folder for folder-based formats.
        img_dir: Folder of the images; default :func:`backend.data.image_paths.default_img_dir`.
        format: A registered format name, or ``auto`` to detect it from the header/layout.
        metadata_csv: Extra metadata file for formats that have one (ISIC 2019).
        skip_missing: Drop rows whose image file is missing, with one warning and a count.
        check_images: Require image files to exist (see
            :func:`backend.data.formats.validation.finalize_table`).

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
