"""Where a label file's images are: the default image folder, the file of each name, the id of each file.

Label files name images in every way (``ISIC_0000000``, ``ISIC_0000000.JPG``, ``sub/a.png``); a
:class:`FolderIndex` lists each folder once and resolves names with or without extension, falling
back to a case-insensitive match, so 25k rows resolve without 25k file-system calls.
"""

from __future__ import annotations

import os
from pathlib import Path

from backend.data.schema import IMAGE_EXTENSIONS


def default_img_dir(path: str | Path) -> Path:
    """``images/`` beside the label file (or inside the folder) when it exists, else that folder."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    return base / "images" if (base / "images").is_dir() else base


class FolderIndex:
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


def image_id(name: str | os.PathLike[str]) -> str:
    """The id of an image file name or path: its stem when it ends in an image extension, else its base name.

    ``/x/ISIC_0000000.jpg`` -> ``ISIC_0000000``; ``ISIC_0000000`` (no extension) stays as it is.
    """
    base = os.path.basename(os.fspath(name))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base
