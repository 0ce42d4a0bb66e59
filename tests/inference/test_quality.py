"""Quality gate: image-statistics flags on bad images (and not on a lesion), OOD flag from feature statistics."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.errors import CheckpointError
from backend.inference import quality
from backend.inference.inputs import prepare_input
from backend.inference.quality import FLAG_CODES, FeatureStats, QualityConfig, file_flags, image_flags, jpeg_damage
from tests.inference.tiny import lesions, tiny_predictor


def codes(image: np.ndarray, cfg: QualityConfig | None = None) -> set[str]:
    return {f.code for f in image_flags(image, cfg)}


@pytest.fixture
def lesion() -> np.ndarray:
    return lesions(1, size=96, seed=3)[0]


def test_synthetic_lesion_is_not_flagged(lesion):
    assert codes(lesion) == set()
    assert codes(lesions(1, size=64, seed=5)[0]) == set()


def test_blank_image(lesion):
    flags = image_flags(np.full((96, 96, 3), 128, np.uint8))
    assert [f.code for f in flags] == ["blank"]
    assert "blank" in flags[0].reason


def test_too_dark(lesion):
    dark = (lesion.astype(np.float32) * 0.1).astype(np.uint8)
    assert "too_dark" in codes(dark)
    assert "too_bright" not in codes(dark)


def test_too_bright(lesion):
    bright = np.clip(lesion.astype(np.int32) + 100, 0, 255).astype(np.uint8)
    assert "too_bright" in codes(bright)


def test_blurred(lesion):
    blurred = cv2.GaussianBlur(lesion, (0, 0), sigmaX=4)
    assert codes(blurred) == {"blurred"}
    reason = image_flags(blurred)[0].reason
    assert reason == "The image is too blurred to assess: retake it in focus." and "Laplacian" not in reason


def test_tiny():
    small = lesions(1, size=32, seed=1)[0]
    flags = image_flags(small)
    assert "tiny" in [f.code for f in flags]
    assert "too small (32 x 32 px)" in next(f.reason for f in flags if f.code == "tiny")
    assert "tiny" not in codes(small, QualityConfig(min_side=16))


def test_blue_image_is_not_skin(lesion):
    rng = np.random.default_rng(0)
    blue = np.clip(rng.normal((20, 40, 220), 8, (96, 96, 3)), 0, 255).astype(np.uint8)
    assert "not_skin" in codes(blue)
    green = np.clip(rng.normal((30, 200, 40), 8, (96, 96, 3)), 0, 255).astype(np.uint8)
    assert "not_skin" in codes(green)


def test_blue_cast_dermoscopy_is_skin(lesion):
    """Some dermoscopes give a blue cast that colour constancy removes: not a reason to flag."""
    cast = np.clip(lesion.astype(np.float32) * np.array([0.6, 0.85, 1.25]), 0, 255).astype(np.uint8)
    assert "not_skin" not in codes(cast)


def test_every_flag_code_is_documented(lesion):
    assert {"damaged", "transparent", "tiny", "blank", "too_dark", "too_bright", "blurred", "noise", "no_colour",
            "not_skin", "out_of_distribution"} == set(FLAG_CODES)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_picture_with_a_transparent_part_is_flagged_and_an_opaque_alpha_band_is_not(lesion):
    rgba = np.dstack([lesion, np.full(lesion.shape[:2], 255, np.uint8)])
    assert [f.code for f in file_flags(_png(rgba))] == []  # an alpha band, all opaque: a photo saved as RGBA
    cut = rgba.copy()
    cut[:, : lesion.shape[1] // 4, 3] = 0  # the left quarter transparent
    flags = file_flags(_png(cut))
    assert [f.code for f in flags] == ["transparent"] and flags[0].reason.startswith("25% of the picture")
    speck = rgba.copy()
    speck[0, 0, 3] = 0  # one pixel of thousands: below the 1% share
    assert file_flags(_png(speck)) == [] and file_flags(_png(lesion)) == []


@pytest.fixture(scope="module")
def predictor_with_stats():
    predictor = tiny_predictor()
    stats = predictor.fit_ood(lesions(40, seed=10))
    assert stats.n == 40 and stats.threshold > 0
    return predictor


def test_far_away_image_is_out_of_distribution(predictor_with_stats):
    rng = np.random.default_rng(1)
    checker = (np.indices((64, 64)).sum(axis=0) // 8 % 2).astype(bool)
    far = np.where(checker[..., None], np.array([0, 255, 0], np.uint8), np.array([255, 0, 255], np.uint8))
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    results = predictor_with_stats.predict([far, noise])
    for result in results:
        assert "out_of_distribution" in result.flags
        assert result.ood_distance > predictor_with_stats.feature_stats.threshold
        assert "unlike the images the model was trained on" in result.flag_reasons["out_of_distribution"]
        assert result.traffic_light == "grey" and result.model_light in ("green", "yellow", "red")
        assert sum(result.probabilities.values()) == pytest.approx(1.0)  # still predicted


def test_new_lesions_are_mostly_in_distribution(predictor_with_stats):
    results = predictor_with_stats.predict(lesions(20, seed=99))
    flagged = sum("out_of_distribution" in r.flags for r in results)
    assert flagged <= 4
    assert all(r.ood_distance is not None for r in results)


def test_ood_check_can_be_switched_off(predictor_with_stats):
    predictor = tiny_predictor(net=predictor_with_stats.net, feature_stats=predictor_with_stats.feature_stats,
                               quality=QualityConfig(ood_enabled=False))
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert "out_of_distribution" not in predictor.predict(noise)[0].flags


def test_feature_stats_round_trip_and_validation():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 6))
    stats = FeatureStats.fit(feats, percentile=95)
    again = FeatureStats.from_parts(stats.summary(), stats.tensors())
    np.testing.assert_allclose(again.distance(feats), stats.distance(feats), rtol=1e-5)
    assert again.threshold == stats.threshold and again.n == 30 and again.dim == 6
    assert stats.flag(stats.threshold * 2).code == "out_of_distribution" and stats.flag(0.0) is None
    with pytest.raises(CheckpointError, match="incomplete"):
        FeatureStats.from_parts(stats.summary(), {})
    with pytest.raises(ValueError, match="N >= 4"):
        FeatureStats.fit(feats[:3])


def test_the_blur_check_does_not_depend_on_the_files_pixel_size(tmp_path):
    """A large file is decoded at reduced size, never below the focus measure's side (224 px)."""
    predictor = tiny_predictor()  # a 64 px network: without the floor, files would decode far below 224 px
    scene = cv2.resize(lesions(1, size=96, seed=3)[0], (1024, 768), interpolation=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(scene, (0, 0), sigmaX=17)
    buffer = io.BytesIO()
    Image.fromarray(blurred).save(buffer, format="JPEG", quality=95)
    prepared = predictor.prepare(("blurred.jpg", buffer.getvalue()))
    assert min(prepared.image.shape[:2]) >= predictor.quality.blur_side == predictor.decode_side
    from_file, from_pixels = predictor.predict([("blurred.jpg", buffer.getvalue()), blurred])
    assert "blurred" in from_pixels.flags and "blurred" in from_file.flags


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_damaged_jpeg_is_flagged_from_bytes_and_from_a_path(lesion, tmp_path):
    data = _jpeg(lesion)
    # The scan cut short and the file closed again: Pillow decodes it without a word (flat lower part).
    damaged = data[: len(data) * 2 // 3] + b"\xff\xd9"
    assert prepare_input(("cut.jpg", damaged)).image.shape == lesion.shape
    assert jpeg_damage(data) is None and "premature end" in jpeg_damage(damaged)
    cfg = QualityConfig()
    flags = prepare_input(("cut.jpg", damaged)).flags(cfg)
    assert flags[0].code == "damaged" and "The file is damaged" in flags[0].reason
    assert "premature end of data segment" in flags[0].reason
    assert [f.code for f in prepare_input(("ok.jpg", data)).flags(cfg)] == []
    (tmp_path / "cut.jpg").write_bytes(damaged)
    assert "damaged" in {f.code for f in prepare_input(tmp_path / "cut.jpg").flags(cfg)}
    # Not a JPEG, or no bytes at all (pixels): nothing to check.
    png = io.BytesIO()
    Image.fromarray(lesion).save(png, "PNG")
    assert jpeg_damage(png.getvalue()) is None and file_flags(None) == [] and file_flags(b"") == []


def test_noise_and_black_and_white_images_are_flagged(lesion):
    rng = np.random.default_rng(0)
    for side in (64, 300):
        noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        assert "noise" in codes(noise), side
        grey_noise = np.repeat(rng.integers(0, 256, (side, side, 1), dtype=np.uint8), 3, axis=2)
        assert {"noise", "no_colour"} <= codes(grey_noise), side
    grey = np.repeat(cv2.cvtColor(lesion, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    assert codes(grey) == {"no_colour"}
    assert "colour" in image_flags(grey)[0].reason
    # The lesion itself is neither, and neither limit is near it.
    assert codes(lesion) == set()
    assert codes(lesion, QualityConfig(noise_ratio=1e9, min_chroma=0)) == set()


def test_a_noise_image_never_gets_a_risk_colour():
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    [result] = tiny_predictor().predict([noise])
    assert result.traffic_light == "grey" and "noise" in result.flag_reasons


@pytest.mark.parametrize(("warning", "damaged"), [
    ("Corrupt JPEG data: premature end of data segment", True),
    ("Corrupt JPEG data: bad Huffman code", True),
    ("Corrupt JPEG data: 157 extraneous bytes before marker 0xd9", True),  # lost its place in the scan
    ("Corrupt JPEG data: 2 extraneous bytes before marker 0xd9", False),  # a camera's padding
    ("Invalid SOS parameters for sequential JPEG", False),  # many phone photos: the picture is whole
    ("Unsupported color conversion request", False),  # not damage: the normal decoder decides
])
def test_only_decoder_warnings_about_lost_picture_data_mean_damage(lesion, monkeypatch, warning, damaged):
    def strict_decoder(*args, **kwargs):
        raise ValueError(warning)

    monkeypatch.setattr(quality.simplejpeg, "decode_jpeg", strict_decoder)
    assert (jpeg_damage(_jpeg(lesion)) == warning) is damaged


def test_a_damaged_progressive_jpeg_is_flagged(lesion):
    buffer = io.BytesIO()
    Image.fromarray(lesions(1, size=96, seed=3)[0]).save(buffer, "JPEG", quality=90, progressive=True)
    data = bytearray(buffer.getvalue())
    assert jpeg_damage(bytes(data)) is None
    data[1048] = 7  # one byte of a scan: the decoder loses its place before the next scan (marker 0xda)
    assert "extraneous bytes before marker 0xda" in jpeg_damage(bytes(data))
