"""The label-format registry: a format registers its loader with a decorator, detection asks every format.

Like timm's ``@register_model``: a format module decorates its loader with
:func:`register_format`, and importing the module (``backend/data/formats/__init__.py`` imports the
built-in ones) is all it takes; nothing else branches on format names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backend.data.csv_rows import read_header, read_text
from backend.errors import DataFormatError

Detector = Callable[[Path], bool]
Loader = Callable[[Path, Path, "Path | None"], pd.DataFrame]


@dataclass(frozen=True)
class DataFormat:
    """A registered label format.

    Attributes:
        name: Registry key, also accepted as ``format=`` by ``load_table``.
        detect: ``detect(path) -> bool``; True when ``path`` (file or folder) is in this format.
        load: ``load(path, img_dir, metadata_csv) -> DataFrame`` of raw rows (see
            :mod:`backend.data.formats`).
        description: One line shown when auto-detection fails.
    """

    name: str
    detect: Detector
    load: Loader
    description: str = ""


_REGISTRY: dict[str, DataFormat] = {}


def register_format(name: str, *, detect: Detector, description: str = "",
                    replace: bool = False) -> Callable[[Loader], Loader]:
    """Decorator registering the decorated loader as label format ``name``.

    Usage::

        @register_format("ham10000", detect=detect, description="HAM10000_metadata.csv: ...")
        def load(path: Path, img_dir: Path, metadata_csv: Path | None) -> pd.DataFrame: ...

    Args:
        name: Registry key (``load_table(..., format=name)``).
        detect: Cheap test of a path (look at the header or the folder layout only).
        description: One line listed when auto-detection fails.
        replace: Allow re-registering ``name``.

    Returns:
        The decorator; it returns the loader unchanged.

    Raises:
        ValueError: ``name`` is already registered and ``replace`` is False (two adapters fighting
            over one name is a programming error, not bad input).
    """

    def decorator(load: Loader) -> Loader:
        if name in _REGISTRY and not replace:
            raise ValueError(f"label format {name!r} is already registered")
        _REGISTRY[name] = DataFormat(name, detect, load, description)
        return load

    return decorator


def list_formats() -> list[str]:
    """Names of the registered formats, in registration order."""
    return list(_REGISTRY)


def get_format(name: str, path: object = "<format>") -> DataFormat:
    """The registered format ``name``; DataFormatError (about ``path``) listing the names otherwise."""
    if name not in _REGISTRY:
        raise DataFormatError(path, f"unknown label format {name!r}; registered formats: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def detect_format(path: str | Path) -> str:
    """Name of the single registered format whose ``detect`` accepts ``path``.

    Raises:
        DataFormatError: The file is empty, or no format or several formats match; the message lists
            the registered formats so the user can pass ``format=`` explicitly.
    """
    path = Path(path)
    if path.is_file():
        read_text(path)  # an unreadable, binary or non-UTF-8 file is named as such, not as an unknown format
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
