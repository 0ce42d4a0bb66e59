"""Image decoding: bad files become ImageLoadError with a reason, every mode becomes upright RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.data import images
from backend.data.images import decode_image_bytes, load_image
from backend.data.schema import IMAGE_EXTENSIONS
from backend.errors import ConfigError, DermaLensError, ImageLoadError
from tests.conftest import make_lesion_image, png_bytes


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def jpeg_bytes(rng: np.random.Generator) -> bytes:
    return encode(Image.fromarray(make_lesion_image(rng, 64)), "JPEG", quality=95)


# --------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected reason fragment); built once per module (the bomb PNG takes a moment)."""
    tmp_path = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(1)
    jpeg = encode(Image.fromarray(make_lesion_image(rng, 64)), "JPEG", quality=95)
    png = encode(Image.new("RGB", (32, 32), (200, 100, 50)), "PNG")
    corrupt_png = bytearray(png)
    corrupt_png[-20:-14] = b"\xff" * 6  # inside IDAT: checksum and data no longer match
    files = {
        "empty.jpg": (b"", "file is empty (0 bytes)"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt image data"),
        "random.jpg": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image file (unrecognised format"),
        "text.png": (b"patient notes, definitely not pixels\n", "not an image file (unrecognised format"),
        "corrupt.png": (bytes(corrupt_png), "truncated or corrupt image data"),
        "header_only.png": (png_bytes(50, 20, rows=False), "truncated or corrupt image data"),
        "bomb.png": (png_bytes(20_000, 20_000), "too large to open safely"),
    }
    corpus = {}
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        corpus[name] = (tmp_path / name, reason)
    (tmp_path / "folder.jpg").mkdir()
    corpus["folder.jpg"] = (tmp_path / "folder.jpg", "is a directory")
    corpus["missing.jpg"] = (tmp_path / "missing.jpg", "file not found")
    return corpus


BAD_NAMES = ["empty.jpg", "truncated.jpg", "random.jpg", "text.png", "corrupt.png", "header_only.png", "bomb.png",
             "folder.jpg", "missing.jpg"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_file_raises_image_load_error_with_path_and_reason(bad_corpus, name):
    path, reason = bad_corpus[name]
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert isinstance(err, DermaLensError)
    assert err.path == str(path)
    assert str(path) in str(err)
    assert reason in err.reason, err.reason


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n not in ("folder.jpg", "missing.jpg")])
def test_bad_bytes_raise_with_the_given_name(bad_corpus, name):
    path, reason = bad_corpus[name]
    with pytest.raises(ImageLoadError) as info:
        decode_image_bytes(path.read_bytes(), "upload-42.jpg")
    assert str(info.value).startswith("upload-42.jpg: ")
    assert reason in info.value.reason


def test_header_without_pixels_is_truncated(tmp_path):
    path = tmp_path / "header_only.png"
    path.write_bytes(png_bytes(50, 20, rows=False))
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(path)


def test_our_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match=r"too large to open safely \(0 megapixels \(64 x 64 px\); the limit is "
                                             r"0.001 megapixels\)"):
        load_image(path)


def test_a_long_strip_is_refused_from_the_header_and_a_panorama_is_not():
    strip = io.BytesIO()
    Image.new("RGB", (20_000, 1)).save(strip, "PNG")
    assert len(strip.getvalue()) < 1000  # a few hundred bytes that a resize of the short side would blow up
    with pytest.raises(ImageLoadError, match=r"strip.png: This picture is a strip of 20000 x 1 px, more than 10 "
                                             r"times longer than wide"):
        decode_image_bytes(strip.getvalue(), "strip.png")
    wide = io.BytesIO()
    Image.fromarray(make_lesion_image(np.random.default_rng(0), 40)).resize((400, 40)).save(wide, "PNG")
    assert decode_image_bytes(wide.getvalue(), "wide.png").shape == (40, 400, 3)


def test_pillow_bomb_warning_is_turned_into_an_error(tmp_path, monkeypatch):
    # 10000 x 10000 = 1e8 pixels: between Pillow's warning and error limits; our own limit lifted, so
    # only Pillow's warning can stop it (else decoding would start and fail as "truncated").
    monkeypatch.setattr(images, "MAX_PIXELS", 10**9)
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(10_000, 10_000, rows=False))
    with pytest.raises(ImageLoadError, match=r"This image is too large to open safely \(100 megapixels; the limit"
                       ) as info:
        load_image(path)
    assert "decompression" not in str(info.value) and "DOS" not in str(info.value)


def test_image_just_above_max_pixels_names_its_size(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(9_000, 8_000, rows=False))  # 72 MP: ours refuses, Pillow would not
    with pytest.raises(ImageLoadError, match=r"This image is too large to open safely \(72 megapixels \(9000 x 8000 "
                                             r"px\); the limit is 64 megapixels\)"):
        load_image(path)


@pytest.mark.parametrize("target", [0, -5, True, 1.5, "128"])
def test_bad_target_size_is_a_config_error(jpeg_bytes, target):
    with pytest.raises(ConfigError, match="target_size"):
        decode_image_bytes(jpeg_bytes, "x.jpg", target_size=target)


# --------------------------------------------------------------------------- modes


def _check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)
    assert arr.flags.c_contiguous and arr.flags.writeable


def test_rgb_round_trip_in_every_lossless_format(tmp_path, rng):
    arr = make_lesion_image(rng, 40)
    for ext in (".png", ".bmp", ".tif", ".tiff"):
        path = tmp_path / f"img{ext}"
        Image.fromarray(arr).save(path)
        out = load_image(path)
        _check_rgb(out, (40, 40))
        np.testing.assert_array_equal(out, arr)
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


def test_png_named_jpg_loads_by_content(tmp_path, rng):
    arr = make_lesion_image(rng, 32)
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(encode(Image.fromarray(arr), "PNG"))
    np.testing.assert_array_equal(load_image(path), arr)


def test_grayscale_and_bilevel_become_equal_channels():
    gray = np.arange(48 * 32, dtype=np.uint32).reshape(32, 48) % 256
    out = decode_image_bytes(encode(Image.fromarray(gray.astype(np.uint8)), "PNG"), "g.png")
    _check_rgb(out, (32, 48))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    bits = Image.fromarray((np.indices((8, 8)).sum(0) % 2).astype(bool))
    assert bits.mode == "1"
    out = decode_image_bytes(encode(bits, "PNG"), "b.png")
    assert set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out[..., 0] == 255, np.asarray(bits))


def test_rgba_is_composited_onto_white():
    rgba = np.array([[[10, 200, 30, 0], [10, 200, 30, 255], [10, 200, 30, 128]]], np.uint8)
    out = decode_image_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"), "a.png")
    _check_rgb(out, (1, 3))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent: white, not the hidden colour
    assert out[0, 1].tolist() == [10, 200, 30]  # opaque: unchanged
    expected = (np.array([10, 200, 30]) * 128 + 255 * 127) / 255
    np.testing.assert_allclose(out[0, 2], expected, atol=1.5)


def test_la_is_composited_onto_white():
    la = np.array([[[50, 0], [50, 255]]], np.uint8)
    out = decode_image_bytes(encode(Image.fromarray(la, "LA"), "PNG"), "la.png")
    assert out[0].tolist() == [[255, 255, 255], [50, 50, 50]]


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (768 - 9))
    for x in range(3):
        im.putpixel((x, 0), x)
    return im


def test_palette_without_transparency_maps_colours():
    out = decode_image_bytes(encode(_palette_image(), "PNG"), "p.png")
    assert out[0].tolist() == [[10, 20, 30], [200, 100, 50], [0, 255, 0]]


def test_palette_with_transparency_composites_the_transparent_index():
    data = encode(_palette_image(), "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image_bytes(data, "pt.png")
    assert out[0].tolist() == [[10, 20, 30], [255, 255, 255], [0, 255, 0]]


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta + yellow: red
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    out = decode_image_bytes(encode(cmyk, "TIFF"), "c.tif")
    assert out[1, 1].tolist() == [255, 0, 0]
    assert out[0, 0].tolist() == [255, 255, 255]
    jpeg = decode_image_bytes(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "c.jpg")
    np.testing.assert_allclose(jpeg.reshape(-1, 3).mean(0), [255, 0, 0], atol=6)


@pytest.mark.parametrize(
    ("values", "fmt", "mode"),
    [
        (np.array([[0, 257 * 100, 65535, 32768]], np.uint16), "PNG", "I;16"),
        (np.array([[0, 257 * 100, 65535, 32768]], ">u2"), "TIFF", "I;16B"),
        (np.array([[0, 257 * 100, 65535, 32768]], np.int32), "TIFF", "I"),
    ],
)
def test_sixteen_bit_is_scaled_by_257_not_clipped(values, fmt, mode):
    data = encode(Image.fromarray(values), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the mode under test really is what gets decoded
    out = decode_image_bytes(data, f"deep.{fmt.lower()}")
    assert out[0, :, 0].tolist() == [0, 100, 255, 128]
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_image_in_unit_range_is_scaled_by_255():
    data = encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "TIFF")
    assert decode_image_bytes(data, "f.tif")[0, :, 1].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored landscape: 40 wide, 20 high
    arr[:6, :6] = (255, 0, 0)  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    out = load_image(path)
    _check_rgb(out, (40, 20))  # displayed portrait
    assert out[:5, -5:, 0].mean() > 200 and out[:5, -5:, 1].mean() < 60  # marked corner now top-right
    assert out[:5, :5, 0].mean() < 30


# --------------------------------------------------------------------------- reduced decoding


def _solid(width: int, height: int, fmt: str) -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 120, 80)), fmt)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", (192, 256, 3)), ("PNG", (128, 171, 3))],  # JPEG: DCT 1/4 draft; PNG: full decode + reduce(6)
)
def test_reduced_decode_keeps_short_side_at_least_target(fmt, expected):
    data = _solid(1024, 768, fmt)
    out = decode_image_bytes(data, "big", target_size=128)
    assert out.shape == expected
    short = min(out.shape[:2])
    assert 128 <= short < 256
    assert out.shape[1] / out.shape[0] == pytest.approx(1024 / 768, rel=0.02)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [200, 120, 80], atol=4)
    full = decode_image_bytes(data, "big")
    assert full.shape == (768, 1024, 3)


@pytest.mark.parametrize(("size", "target"), [((1000, 700), 300), ((700, 1000), 300), ((640, 200), 100),
                                              ((512, 512), 64), ((300, 250), 130)])
def test_reduced_decode_never_goes_below_target(size, target):
    for fmt in ("JPEG", "PNG"):
        out = decode_image_bytes(_solid(*size, fmt), "x", target_size=target)
        short = min(out.shape[:2])
        assert target <= short < max(2 * target, min(size) + 1), (fmt, out.shape)


def test_small_image_is_not_reduced(jpeg_bytes):
    assert decode_image_bytes(jpeg_bytes, "small.jpg", target_size=40).shape == (64, 64, 3)


def test_bytes_and_path_decode_identically(tmp_path, rng, jpeg_bytes):
    png = encode(Image.fromarray(make_lesion_image(rng, 48)), "PNG")
    big = _solid(600, 400, "JPEG")
    for name, data, target in (("a.jpg", jpeg_bytes, None), ("b.png", png, None), ("c.jpg", big, 100)):
        path = tmp_path / name
        path.write_bytes(data)
        np.testing.assert_array_equal(load_image(path, target), decode_image_bytes(data, name, target))
