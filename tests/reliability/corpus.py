"""A bad-input corpus built in code: odd and broken images and label CSVs, each with its expected outcome.

Nothing here is a committed binary: every case is made from tiny (32-64 px) synthetic pictures with
Pillow/numpy, or hand-written bytes, when a test asks for it. Each case says what DermaLens must do
with it: either refuse it with the project's own error whose message names the file (and, for
CSVs, the line and field) and a reason, or load it correctly (upright RGB uint8 of the right size,
a validated table). The same cases are run through the image loader, ``scripts/predict.py``,
``scripts/train.py`` and the dashboard by ``tests/reliability/test_bad_inputs*.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import make_lesion_image, png_bytes

SIDE = 48  # side of the synthetic pictures (small enough for the whole corpus to build in milliseconds)


# ----------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageCase:
    """One image file and what loading it must give.

    Attributes:
        id: Readable case name (the pytest id).
        filename: Name the file is written / uploaded under (its extension may lie about the content).
        data: The file's bytes.
        reason: Fragment the :class:`~backend.errors.ImageLoadError` reason must contain; None when the
            file must load.
        shape: ``(height, width)`` a loadable file must decode to.
        check: Extra assertion on the decoded RGB array (e.g. where a marked corner ends up).
    """

    id: str
    filename: str
    data: bytes
    reason: str | None = None
    shape: tuple[int, int] | None = None
    check: Callable[[np.ndarray], None] | None = field(default=None, compare=False)

    @property
    def loads(self) -> bool:
        """True when the file must decode (a correct result), False when it must be refused."""
        return self.reason is None


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """``image`` saved as ``fmt`` into memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def lesion(seed: int, size: int = SIDE) -> Image.Image:
    """A synthetic RGB lesion picture."""
    return Image.fromarray(make_lesion_image(np.random.default_rng(seed), size))


def _corrupt_png() -> bytes:
    """A PNG whose compressed pixel stream has been overwritten (CRC and zlib data no longer agree)."""
    data = bytearray(encode(lesion(3), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start : start + 64] = bytes(range(64))
    return bytes(data)


def _corrupt_jpeg_header() -> bytes:
    """A JPEG whose frame header (SOF0: precision, size, components) is garbage after the markers."""
    data = bytearray(encode(lesion(4), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 4 : sof + 12] = b"\x00\x00\x00\x00\x00\x00\x00\x00"  # zero height/width/components
    return bytes(data)


def _exif_rotated() -> tuple[bytes, Callable[[np.ndarray], None]]:
    """A landscape JPEG (64 x 32 stored) with EXIF Orientation=6 and a red stored top-left corner."""
    stored = np.full((32, 64, 3), 40, np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95)

    def check(rgb: np.ndarray) -> None:
        # Displayed upright (portrait), the stored top-left corner is now the top-right one.
        assert rgb[:6, -6:, 0].mean() > 200 and rgb[:6, -6:, 1].mean() < 60, "marked corner not at top-right"
        assert rgb[:6, :6, 0].mean() < 80, "top-left corner should be the dark background"

    return data, check


def _grey_check(rgb: np.ndarray) -> None:
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]), "not grey"


def _rgba_check(rgb: np.ndarray) -> None:
    # The left half is fully transparent: composited onto white, whatever colour hid under it.
    assert (rgb[:, : SIDE // 2] == 255).all(), "transparent half should be white"
    assert rgb[:, -4:, 0].mean() < 40 and rgb[:, -4:, 2].mean() > 200, "opaque half should stay blue"


def _cmyk_check(rgb: np.ndarray) -> None:
    # CMYK (0, 255, 255, 0) is pure red ink-wise.
    np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), [255, 0, 0], atol=8)


def _sixteen_bit_check(rgb: np.ndarray) -> None:
    # A ramp over the full 16-bit range keeps its ends: 0 -> 0 and 65535 -> 255 (scaled by 257, not clipped).
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255, (rgb[0, 0], rgb[-1, -1])
    _grey_check(rgb)


def image_cases() -> list[ImageCase]:
    """Every image case: bad files that must be refused by name, odd files that must load correctly."""
    jpeg = encode(lesion(1), "JPEG", quality=90)
    png = encode(lesion(2), "PNG")
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., :3] = (0, 0, 0)  # black under the transparent half: must not show through
    rgba[:, SIDE // 2 :] = (0, 0, 255, 255)
    ramp = np.linspace(0, 65535, SIDE * SIDE).round().astype(np.uint16).reshape(SIDE, SIDE)
    rotated, rotated_check = _exif_rotated()
    bad = "truncated or corrupt image data"
    not_image = "not an image file (unrecognised format"
    bomb = "This image is too large to open safely"
    return [
        ImageCase("zero-byte", "zero_byte.jpg", b"", "file is empty (0 bytes)"),
        ImageCase("truncated-jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2], bad),
        ImageCase("truncated-png", "truncated.png", png[: len(png) // 2], bad),
        ImageCase("corrupt-png-pixels", "corrupt.png", _corrupt_png(), bad),
        ImageCase("corrupt-jpeg-header", "corrupt_header.jpg", _corrupt_jpeg_header(),
                  "truncated or corrupt image data: the file starts like a JPEG but its header cannot be read"),
        ImageCase("pdf-named-jpg", "report.jpg", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", not_image),
        ImageCase("text-named-png", "notes.png", b"patient notes, definitely not pixels\n", not_image),
        ImageCase("random-bytes-jpg", "random.jpg", np.random.default_rng(5).bytes(2048), not_image),
        ImageCase("bomb-header-claims-10-gigapixels", "bomb_header.png", png_bytes(100_000, 100_000, rows=False),
                  bomb),
        ImageCase("bomb-compressible-81-megapixels", "bomb_zeros.png", png_bytes(9_000, 9_000), bomb),
        ImageCase("png-named-jpg", "really_png.jpg", png, shape=(SIDE, SIDE)),
        ImageCase("jpeg-named-png", "really_jpeg.png", jpeg, shape=(SIDE, SIDE)),
        ImageCase("grayscale-png", "grey.png", encode(lesion(6).convert("L"), "PNG"), shape=(SIDE, SIDE),
                  check=_grey_check),
        ImageCase("rgba-png", "rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"), shape=(SIDE, SIDE),
                  check=_rgba_check),
        ImageCase("cmyk-jpeg", "cmyk.jpg", encode(Image.new("CMYK", (SIDE, 32), (0, 255, 255, 0)), "JPEG"),
                  shape=(32, SIDE), check=_cmyk_check),
        ImageCase("16-bit-png", "deep16.png", encode(Image.fromarray(ramp), "PNG"), shape=(SIDE, SIDE),
                  check=_sixteen_bit_check),
        ImageCase("exif-rotated-jpeg", "rotated.jpg", rotated, shape=(64, 32), check=rotated_check),
    ]


def check_rgb(rgb: np.ndarray, case: ImageCase) -> None:
    """Assert ``rgb`` is what a loadable ``case`` must decode to: HxWx3 uint8 of its size, plus its check."""
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8, (type(rgb), getattr(rgb, "dtype", None))
    assert rgb.shape == (*case.shape, 3), rgb.shape
    assert rgb.flags.c_contiguous
    if case.check is not None:
        case.check(rgb)


def write_images(folder: Path, cases: list[ImageCase]) -> dict[str, Path]:
    """Write each case's file into ``folder``; returns case id -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        (folder / case.filename).write_bytes(case.data)
        paths[case.id] = folder / case.filename
    return paths


# ------------------------------------------------------------------------------------------------- CSVs

#: Header of the good generic CSV the CSV cases start from.
GOOD_HEADER = "image,diagnosis,label,thickness,thickness_lo_mm,thickness_hi_mm,age_approx,sex"
#: Its rows (lines 2..); every image exists in ``images/``.
GOOD_ROWS = (
    "a1.png,MEL,1,0.8,,,55,male",
    "a2.png,NV,0,,,,40,female",
    "a3.png,BCC,1,,,,70,",
    "a4.png,MEL,1,,0.76,1.5,,female",
)
IMAGE_NAMES = ("a1.png", "a2.png", "a3.png", "a4.png")


def good_csv_text(rows: tuple[str, ...] = GOOD_ROWS, header: str = GOOD_HEADER) -> str:
    """A valid generic CSV (header + rows, newline-terminated)."""
    return "\n".join((header, *rows)) + "\n"


def _with_row(line: int, row: str) -> str:
    """The good CSV with its data row at file line ``line`` (2..5) replaced by ``row``."""
    rows = list(GOOD_ROWS)
    rows[line - 2] = row
    return good_csv_text(tuple(rows))


@dataclass(frozen=True)
class CsvCase:
    """One label CSV and what loading it (``load_table`` with format auto, as training does) must give.

    Attributes:
        id: Readable case name.
        data: The file's bytes.
        fragment: Text the :class:`~backend.errors.DataFormatError` message must contain; None when the
            file must load.
        line: File line the error must name (None: a whole-file problem).
        field: Field the error must name (None: no particular field).
        rows: Number of table rows a loadable file must give.
    """

    id: str
    data: bytes
    fragment: str | None = None
    line: int | None = None
    field: str | None = None
    rows: int | None = None

    @property
    def loads(self) -> bool:
        """True when the CSV must load."""
        return self.fragment is None


def csv_cases() -> list[CsvCase]:
    """Every label-CSV case: bad columns, values, duplicates, missing files, encodings, plus odd-but-valid ones."""
    good = good_csv_text()
    return [
        CsvCase("zero-byte", b"", "file is empty"),
        CsvCase("header-only", (GOOD_HEADER + "\n").encode(), "has a header but no data rows"),
        CsvCase("missing-label-and-diagnosis-columns", b"image,thickness\na1.png,0.5\n",
                "cannot tell the label format (columns found: image, thickness)"),
        CsvCase("missing-image-column", b"label,diagnosis\n1,MEL\n", "cannot tell the label format"),
        CsvCase("duplicate-column", b"image,label,label\na1.png,1,1\n", "column 'label' appears twice", 1, "label"),
        CsvCase("row-with-extra-field", _with_row(3, "a2.png,NV,0,,,,40,female,EXTRA").encode(),
                "expected 8 fields as in the header, found 9", 3),
        CsvCase("label-text", _with_row(3, "a2.png,NV,benign,,,,40,female").encode(), "'benign' is not a number",
                3, "label"),
        CsvCase("label-out-of-range", _with_row(4, "a3.png,,3,,,,70,").encode(),
                "label must be 0 (benign) or 1 (malignant), got '3'", 4, "label"),
        CsvCase("label-contradicts-diagnosis", _with_row(3, "a2.png,NV,1,,,,40,female").encode(),
                "label 1 contradicts diagnosis NV", 3, "label"),
        CsvCase("unknown-diagnosis", _with_row(5, "a4.png,MELANOMA,1,,,,,").encode(), "unknown diagnosis 'MELANOMA'",
                5, "diagnosis"),
        CsvCase("thickness-negative", _with_row(2, "a1.png,MEL,1,-0.5,,,55,male").encode(), "'-0.5' is negative",
                2, "thickness"),
        CsvCase("thickness-text", _with_row(2, "a1.png,MEL,1,thick,,,55,male").encode(), "'thick' is not a number",
                2, "thickness"),
        CsvCase("thickness-lo-above-hi", _with_row(5, "a4.png,MEL,1,,2.0,1.0,,female").encode(),
                "thickness band lower bound '2.0' mm exceeds its upper bound", 5, "thickness_lo_mm"),
        CsvCase("thickness-on-benign", _with_row(3, "a2.png,NV,0,1.2,,,40,female").encode(),
                "Breslow thickness is only defined for melanoma", 3, "thickness"),
        CsvCase("age-text", _with_row(3, "a2.png,NV,0,,,,forty,female").encode(), "'forty' is not a number", 3,
                "age_approx"),
        CsvCase("duplicate-row", good_csv_text((*GOOD_ROWS, GOOD_ROWS[1])).encode(),
                "image 'a2' is listed twice, on lines 3 and 6", 6, "image"),
        CsvCase("duplicate-image-other-extension", good_csv_text((*GOOD_ROWS, "a2.jpg,NV,0,,,,40,female")).encode(),
                "image 'a2' is listed twice", 6, "image"),
        CsvCase("missing-image-file", _with_row(4, "gone.png,BCC,1,,,,70,").encode(),
                "image file 'gone.png' not found", 4, "image"),
        CsvCase("blank-image-name", _with_row(4, ",BCC,1,,,,70,").encode(), "image name is blank", 4, "image"),
        # The open quote swallows the rest of the file into one field: the row is reported where it starts.
        CsvCase("unclosed-quote", (good + 'a9.png,"NV,0,,,,40,female\n').encode(),
                "expected 8 fields as in the header, found 2", 6),
        CsvCase("latin-1-bytes", _with_row(3, "a2.png,NV,0,,,,40,féminin").encode("latin-1"), "not UTF-8 text", 3),
        CsvCase("utf-16-with-bom", good.encode("utf-16"), "not UTF-8 text (it looks like UTF-16)", 1),
        CsvCase("utf-16-le-without-bom", good.encode("utf-16-le"), "not UTF-8 text", 1),
        CsvCase("utf-8-bom", good.encode("utf-8-sig"), rows=4),
        CsvCase("crlf-line-endings", good.replace("\n", "\r\n").encode(), rows=4),
        CsvCase("blank-lines-before-header-and-between-rows", ("\n\n" + good.replace("\n", "\n \n")).encode(), rows=4),
        CsvCase("spaces-around-cells", good.replace(",", " , ").encode(), rows=4),
        CsvCase("nul-bytes-binary", b"image,label\na1.png,1\x00\x00\n", "contains NUL bytes", 2),
    ]


def write_images_for_csv(folder: Path) -> Path:
    """Write the images the CSV cases name into ``folder/images``; returns that folder."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(IMAGE_NAMES):
        lesion(10 + i, 32).save(images / name)
    return images
