"""Robust image decoding: any supported file or upload becomes an HxWx3 uint8 RGB array, or a clear error.

Everything that reads pixels (dataset, preprocessing cache, the Streamlit app) goes through
:func:`load_image` or :func:`decode_image_bytes` so that all of them treat odd files the same way:

* EXIF orientation is applied, so a phone photo is upright whatever the camera stored.
* Every colour mode becomes RGB. Transparency (an alpha band, a palette with transparent entries, a
  ``tRNS`` colour key) is **composited onto white**: the colour hidden under fully transparent
  pixels is arbitrary (often black or garbage), and white is how the app shows such an image.
* 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) is mapped to 8 bits by its nominal 16-bit
  range (``value / 257``, rounded), so 65535 becomes 255 and nothing is clipped away. Float images
  (``F``) in ``[0, 1]`` are scaled by 255; other float or out-of-range integer data is min-max
  stretched.
* Images larger than :data:`MAX_PIXELS` are refused from the header, before any pixel is decoded
  (decompression bombs), and so are the ones Pillow itself flags. So are strips longer than
  :data:`MAX_ASPECT` times their width: no photo of a lesion, and a network resizing the short
  side would blow a 1 x 20,000 px strip up to gigabytes.
* Any decoding failure becomes :class:`~backend.errors.ImageLoadError` naming the file and the reason;
  no raw Pillow/OS error escapes.

With ``target_size`` a big image is decoded at reduced size (JPEG DCT scaling via ``Image.draft``,
otherwise ``Image.reduce`` after decoding), never below ``target_size`` on the short side, which
makes loading large originals for a 224-px network several times faster.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from backend.errors import ConfigError, ImageLoadError

#: Largest accepted image, in pixels (64 MP: ~192 MB decoded RGB). Checked from the header only.
MAX_PIXELS: int = 64_000_000
#: Largest accepted ratio of the long to the short side (a panorama of 10:1 still passes).
MAX_ASPECT: int = 10

# Pillow decoders tried; anything else (EPS would start Ghostscript, for one) is refused as unrecognised.
# (Pillow's JPEG opener also returns the multi-picture "MPO" JPEGs some cameras write.)
_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF")
# What Pillow's decoders raise on broken data (SyntaxError: "broken PNG file", struct.error: short headers...).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)
# Magic bytes of the supported formats, to call a file whose header Pillow rejects "corrupt" rather than "not an image".
_SIGNATURES: dict[bytes, str] = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

PathArg = str | os.PathLike[str]


def load_image(path: PathArg, target_size: int | None = None) -> np.ndarray:
    """Decode an image file into an upright RGB array.

    Args:
        path: Image file. Its content decides the format, so a PNG named ``.jpg`` loads fine.
        target_size: If given, images whose short side is at least twice this are decoded at a
            reduced size whose short side stays >= ``target_size`` (aspect kept); callers resize
            the rest of the way. ``None`` decodes at full size.

    Returns:
        HxWx3 uint8 RGB array, C-contiguous and writeable.

    Raises:
        ImageLoadError: The file is missing, empty, a directory, unreadable, not an image, truncated,
            corrupt or too large; the message names ``path`` and the reason.
        ConfigError: ``target_size`` is not a positive integer.
    """
    _check_target_size(target_size)
    with _open_file(path) as fh:
        return _decode(fh, path, target_size)


def decode_image_bytes(data: bytes, name: str, target_size: int | None = None) -> np.ndarray:
    """Decode an in-memory image (an upload) exactly like :func:`load_image`, without touching disk.

    Args:
        data: The encoded file content.
        name: What errors call the image (the uploaded file name).
        target_size: As in :func:`load_image`.

    Returns:
        HxWx3 uint8 RGB array.

    Raises:
        ImageLoadError: ``data`` is empty or cannot be decoded; the message names ``name``.
        ConfigError: ``target_size`` is not a positive integer.
    """
    _check_target_size(target_size)
    if len(data) == 0:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, target_size)


def _check_target_size(target_size: int | None) -> None:
    """Reject a target size that cannot be honoured (bools and non-positive values included)."""
    if target_size is None:
        return
    if isinstance(target_size, bool) or not isinstance(target_size, int) or target_size < 1:
        raise ConfigError(f"target_size must be a positive integer or None, got {target_size!r}")


@contextmanager
def _open_file(path: PathArg) -> Iterator[BinaryIO]:
    """Open ``path`` for reading, turning file-system failures into :class:`ImageLoadError`.

    Opening the file ourselves (instead of letting Pillow do it) tells "missing" and "permission
    denied" apart from "corrupt", and checks emptiness on the very file that is then decoded.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with-block below, after yielding
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except OSError as err:
        raise ImageLoadError(path, f"cannot open file: {err.strerror or err}") from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
        except OSError as err:
            raise ImageLoadError(path, f"cannot read file: {err.strerror or err}") from None
        if size == 0:
            raise ImageLoadError(path, "file is empty (0 bytes)")
        yield fh


def _too_large(pixels: int | None, size: str = "") -> str:
    """Why an oversized image is refused, in a clinician's words (an image this big could exhaust memory)."""
    limit = f"the limit is {MAX_PIXELS / 1e6:g} megapixels"
    if pixels is None:
        return f"This image is too large to open safely ({limit})"
    return f"This image is too large to open safely ({pixels / 1e6:.0f} megapixels{size}; {limit})"


@contextmanager
def _open_image(fp: BinaryIO, name: object) -> Iterator[Image.Image]:
    """Identify ``fp`` with Pillow, refuse oversized images, and translate every decoding error.

    The with-body (decoding, conversion) runs inside the ``try``, so errors Pillow raises lazily
    while decoding are translated here too: the one place that maps Pillow failures to reasons.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between 1x and 2x its own limit: refuse those as well.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=_FORMATS) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise ImageLoadError(name, _too_large(width * height, f" ({width} x {height} px)"))
                if max(width, height) > MAX_ASPECT * min(width, height):
                    raise ImageLoadError(name, f"This picture is a strip of {width} x {height} px, more than "
                                               f"{MAX_ASPECT} times longer than wide: not a photo of a lesion")
                yield im
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))  # Pillow's message: "Image size (N pixels) exceeds..."
        raise ImageLoadError(name, _too_large(int(found.group(1)) if found else None)) from None
    except UnidentifiedImageError:
        kind = _signature(fp)
        if kind is not None:  # Pillow gives up on a broken header exactly as on a non-image: tell them apart
            raise ImageLoadError(
                name, f"truncated or corrupt image data: the file starts like a {kind} but its header cannot be read"
            ) from None
        raise ImageLoadError(
            name, "not an image file (unrecognised format; JPEG, PNG, BMP and TIFF are supported)"
        ) from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode this image") from None
    except _DECODE_ERRORS as err:
        raise ImageLoadError(name, f"truncated or corrupt image data: {err}") from None


def _signature(fp: BinaryIO) -> str | None:
    """The supported format whose magic bytes ``fp`` starts with, or None (also when it cannot be re-read)."""
    try:
        fp.seek(0)
        head = fp.read(len(max(_SIGNATURES, key=len)))
    except (OSError, ValueError):
        return None
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def _decode(fp: BinaryIO, name: object, target_size: int | None) -> np.ndarray:
    """The one decoding path shared by files and in-memory bytes."""
    with _open_image(fp, name) as im:
        if target_size is not None:
            _draft(im, target_size)
        im.load()  # decode now, so truncation is reported as such and not as an EXIF problem
        image = _apply_orientation(im)
        try:
            image = _to_rgb(image)
        except ValueError as err:  # Pillow has no conversion for a few exotic modes
            raise ImageLoadError(name, f"unsupported colour mode {image.mode!r} ({err})") from None
        if target_size is not None:
            image = _reduce(image, target_size)
        array = np.array(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:  # defensive: _to_rgb always returns RGB
        raise ImageLoadError(name, f"decoded to an unexpected shape {array.shape}")
    return np.ascontiguousarray(array)


def _draft(im: Image.Image, target_size: int) -> None:
    """Ask a JPEG decoder for a 1/2, 1/4 or 1/8 scale whose short side stays >= ``target_size``.

    Pillow picks the largest scale ``s`` in (8, 4, 2, 1) with ``s <= min(W // w, H // h)`` for the
    requested ``(w, h)``; asking for the aspect-kept size whose short side is ``target_size`` makes
    both quotients at most ``short / target_size``, so the result never drops below the target.
    Non-JPEG images ignore the draft request and are reduced after decoding instead.
    """
    width, height = im.size
    short = min(width, height)
    if short < 2 * target_size:
        return
    request = (-(-width * target_size // short), -(-height * target_size // short))  # ceil division
    im.draft("RGB", request)


def _reduce(im: Image.Image, target_size: int) -> Image.Image:
    """Box-downscale by an integer factor so the short side lands in ``[target_size, 2 * target_size)``."""
    factor = min(im.size) // target_size
    if factor < 2:
        return im
    return im.reduce(factor)  # output size rounds up, so short side >= short / factor >= target_size


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8) from the header; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Turn the decoded image upright; a broken EXIF block must not make readable pixels unusable."""
    if _orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16/32-bit integer or float greyscale to uint8 by its nominal range, never clipping."""
    data = values.astype(np.float64)
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = data * 255.0
    elif mode != "F" and lo >= 0.0 and hi <= 65535.0:
        scaled = data / 257.0
    elif hi > lo:
        scaled = (data - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(data)
    return np.rint(scaled).clip(0, 255).astype(np.uint8)
