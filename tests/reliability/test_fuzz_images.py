"""Fuzzing the image decoder (``decode_image_bytes``, the path of every upload and file) with hypothesis.

Whatever the bytes, exactly one of two things may happen: an HxWx3 uint8 RGB array comes back, or
:class:`~backend.errors.ImageLoadError` (a ``DermaLensError``) naming the file. Any other exception,
from Pillow, numpy or the OS, is a bug. Inputs are arbitrary bytes, arbitrary bytes behind a real
format signature (so the decoders get past identification), and byte-level mutations of small
valid PNG, JPEG, BMP and TIFF files in several colour modes. ``derandomize=True`` makes every run
try the same examples, so CI is deterministic.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from backend.data.images import MAX_PIXELS, decode_image_bytes, load_image
from backend.errors import DermaLensError, ImageLoadError
from tests.reliability.corpus import encode, lesion

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAME = "fuzzed-upload.img"
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM")


def _valid_files() -> dict[str, bytes]:
    """Small valid files of every supported format, in the colour modes the decoder converts."""
    rgb = lesion(40, 24)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 8
    deep = Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 97)
    return {
        "png-rgb": encode(rgb, "PNG"),
        "png-rgba": encode(rgba, "PNG"),
        "png-palette": encode(rgb.convert("P"), "PNG"),
        "png-16bit": encode(deep, "PNG"),
        "png-grey": encode(rgb.convert("L"), "PNG"),
        "jpeg-rgb": encode(rgb, "JPEG", quality=80),
        "jpeg-progressive-exif": encode(rgb, "JPEG", quality=80, progressive=True, exif=exif),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-grey": encode(rgb.convert("L"), "JPEG"),
        "bmp-rgb": encode(rgb, "BMP"),
        "tiff-rgb": encode(rgb, "TIFF"),
        "tiff-deflate-rgba": encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-16bit": encode(deep, "TIFF"),
    }


VALID = _valid_files()


def check_outcome(data: bytes) -> None:
    """Decode ``data``: an RGB uint8 array or the project's own error naming the file; nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF/metadata; only the outcome matters
            rgb = decode_image_bytes(data, NAME)
    except DermaLensError as err:
        assert isinstance(err, ImageLoadError), repr(err)
        assert str(err).startswith(f"{NAME}: ") and err.reason, str(err)
        event(f"refused: {err.reason.split(':')[0].split(' (')[0]}")  # --hypothesis-show-statistics
        return
    event("decoded")
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8, type(rgb)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] >= 1 and rgb.shape[1] >= 1, rgb.shape
    assert rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
    assert rgb.flags.c_contiguous and rgb.flags.writeable


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data: bytes):
    check_outcome(data)


@FUZZ
@given(signature=st.sampled_from(SIGNATURES), rest=st.binary(max_size=2048))
def test_fuzz_bytes_behind_a_format_signature(signature: bytes, rest: bytes):
    check_outcome(signature + rest)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid small file with 1-4 byte-level mutations: overwrite, flip, insert, delete, truncate, splice."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["overwrite", "flip", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[pos:]
        else:  # a piece of another valid file pasted in (headers and markers of a real format)
            other = VALID[draw(st.sampled_from(sorted(VALID)))]
            start = draw(st.integers(0, len(other) - 1))
            data[pos:pos] = other[start : start + draw(st.integers(1, 64))]
    return bytes(data)


@FUZZ
@given(data=mutated_files())
def test_fuzz_mutated_valid_files(data: bytes):
    check_outcome(data)


@pytest.mark.parametrize("name", sorted(VALID))
def test_unmutated_seed_files_decode(name: str, tmp_path):
    """The seeds themselves decode (else the mutation fuzzer would only ever explore broken files)."""
    rgb = decode_image_bytes(VALID[name], name)
    assert rgb.shape == (24, 24, 3) and rgb.dtype == np.uint8
    path = tmp_path / name
    path.write_bytes(VALID[name])
    np.testing.assert_array_equal(load_image(path), rgb)


def test_seed_files_really_are_their_formats():
    modes = {name: Image.open(io.BytesIO(data)).mode for name, data in VALID.items()}
    assert modes["png-16bit"].startswith("I;16") and modes["jpeg-cmyk"] == "CMYK" and modes["png-palette"] == "P"
    assert modes["png-rgba"] == "RGBA" and modes["tiff-deflate-rgba"] == "RGBA"
