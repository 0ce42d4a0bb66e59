"""The project's own exceptions: every user-facing failure names what and where.

Callers (the CLIs, the app) catch :class:`DermaLensError` and show its message as is; anything
else escaping is a bug.
"""

from __future__ import annotations


class DermaLensError(Exception):
    """Base class of every error DermaLens raises on purpose for bad input or configuration."""


class ConfigError(DermaLensError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DataFormatError(DermaLensError, ValueError):
    """A label/metadata table is malformed.

    Attributes:
        path: File the problem is in.
        line: 1-based line number in that file (header is line 1), or None for whole-file problems.
        field: Column name at fault, or None.
    """

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ImageLoadError(DermaLensError, OSError):
    """An image file cannot be decoded into a usable RGB array.

    Attributes:
        path: The image file.
        reason: Short human-readable reason (e.g. "file is empty (0 bytes)").
    """

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(DermaLensError, ValueError):
    """A checkpoint or model bundle cannot be loaded safely or does not fit the model."""


class FollowUpError(DermaLensError, ValueError):
    """Two visits of one lesion cannot be compared: no lesion found in an image, or unusable input.

    Attributes:
        image: The image at fault (its file or upload name), or None when the pair as a whole is.
    """

    def __init__(self, message: str, image: object | None = None):
        self.image = None if image is None else str(image)
        super().__init__(message if image is None else f"{image}: {message}")
