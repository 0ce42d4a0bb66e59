r"""File names derived from user-supplied names (uploads, CSV rows): never a path, never unbounded.

An uploaded file's name is whatever the client sent: ``../../etc/passwd.jpg``, ``C:\\x\\y.png``,
an absolute path, NUL or control characters, a right-to-left override that disguises the
extension, or thousands of characters. Anything that turns such a name into a file name (a
download, an output file) goes through :func:`safe_stem`, which keeps only the last path
component's stem, in letters, digits, ``-`` and ``_``, bounded in UTF-8 bytes.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest stem in UTF-8 bytes (file systems allow 255 per name; room is left for suffixes).
MAX_STEM_BYTES = 120


def safe_stem(name: str, default: str = "image", max_bytes: int = MAX_STEM_BYTES) -> str:
    r"""A safe file-name stem for a user-supplied file name.

    Args:
        name: The name as received (may hold ``/``, ``\\``, NUL, control or format characters).
        default: What to return when nothing usable is left.
        max_bytes: Upper bound of the result's UTF-8 length.

    Returns:
        The last path component without its extension; every character but letters, digits,
        ``-`` and ``_`` becomes ``_``, runs of ``_`` collapse, and the result never starts with
        ``.``, is never empty and is at most ``max_bytes`` UTF-8 bytes.
    """
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", str(name)))[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    kept = "".join(ch if (ch.isalnum() and ch.isprintable()) or ch in "-_" else "_" for ch in stem)
    kept = re.sub(r"_+", "_", kept).strip("_-")
    while len(kept.encode("utf-8")) > max_bytes:
        kept = kept[:-1]
    return kept.rstrip("_-") or default
