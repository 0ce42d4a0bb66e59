"""Preprocessing cache: resize + write atomically, skip what is done, report bad files, refuse mixed settings."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.data import preprocess
from backend.data.images import load_image
from backend.data.preprocess import (
    REPORT_FILE,
    SETTINGS_FILE,
    PreprocessSettings,
    find_images,
    preprocess_images,
    preprocess_one,
    resize_shorter_side,
)
from backend.errors import ConfigError, DataFormatError
from scripts.preprocess import main
from tests.conftest import make_lesion_image


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file (the cache writes no EXIF orientation)."""
    with Image.open(path) as im:
        return im.size


def read_report(out: Path) -> list[dict[str, str]]:
    with open(out / REPORT_FILE, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["file", "error"]
        return list(reader)


@pytest.fixture
def image_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    """3 good images (JPEG, PNG in a subfolder, BMP) and one corrupt JPEG."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    lesion = make_lesion_image(rng, 64)
    Image.fromarray(lesion[:48]).save(src / "a.jpg", quality=95)  # 64 wide x 48 high
    Image.fromarray(lesion[:, :48]).save(src / "sub" / "b.png")  # 48 wide x 64 high
    Image.fromarray(lesion[:40, :40]).save(src / "c.bmp")
    (src / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("ignored: not an image extension")
    return src


def run(src: Path, out: Path, **kwargs) -> preprocess.PreprocessSummary:
    settings = kwargs.pop("settings", PreprocessSettings(size=32))
    return preprocess_images(src, out, settings, workers=kwargs.pop("workers", 1), progress=False, **kwargs)


def test_folder_is_cached_resized_and_bad_files_reported(image_folder, tmp_path):
    out = tmp_path / "out"
    summary = run(image_folder, out)
    assert (summary.processed, summary.skipped, summary.failed) == (3, 0, 1)
    assert image_size(out / "a.jpg") == (43, 32)  # shorter side 32, aspect kept
    assert image_size(out / "sub" / "b.png") == (32, 43)
    assert image_size(out / "c.bmp") == (32, 32)
    assert [Image.open(out / n).format for n in ("a.jpg", "sub/b.png", "c.bmp")] == ["JPEG", "PNG", "BMP"]
    original = load_image(image_folder / "sub" / "b.png")
    cached = load_image(out / "sub" / "b.png")
    np.testing.assert_allclose(cached.reshape(-1, 3).mean(0), original.reshape(-1, 3).mean(0), atol=3)
    report = read_report(out)
    assert [row["file"] for row in report] == [str(image_folder / "bad.jpg")]
    assert "truncated or corrupt" in report[0]["error"] or "not an image" in report[0]["error"]
    assert json.loads((out / SETTINGS_FILE).read_text())["size"] == 32
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind
    assert "failed 1" in summary.describe() and str(out / REPORT_FILE) in summary.describe()


def test_rerun_skips_existing_files_without_rewriting(image_folder, tmp_path):
    out = tmp_path / "out"
    run(image_folder, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.name not in (REPORT_FILE,)}
    summary = run(image_folder, out)
    assert (summary.processed, summary.skipped, summary.failed) == (0, 3, 1)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    (out / "a.jpg").unlink()  # an interrupted run is completed, not restarted
    assert run(image_folder, out).processed == 1


def test_never_upscales(image_folder, tmp_path):
    out = tmp_path / "out"
    run(image_folder, out, settings=PreprocessSettings(size=100))
    assert image_size(out / "a.jpg") == (64, 48)
    np.testing.assert_array_equal(load_image(out / "c.bmp"), load_image(image_folder / "c.bmp"))


def test_resize_shorter_side_exact():
    image = np.zeros((90, 300, 3), np.uint8)
    assert resize_shorter_side(image, 30).shape == (30, 100, 3)
    assert resize_shorter_side(image.transpose(1, 0, 2), 30).shape == (100, 30, 3)
    assert resize_shorter_side(image, 90) is image


def test_changed_settings_are_refused(image_folder, tmp_path):
    out = tmp_path / "out"
    run(image_folder, out)
    with pytest.raises(ConfigError, match="size: cache has 32, asked 24"):
        run(image_folder, out, settings=PreprocessSettings(size=24))
    with pytest.raises(ConfigError, match="hair_removal"):
        run(image_folder, out, settings=PreprocessSettings(size=32, hair_removal=True))
    # hair parameters do not matter while hair removal is off: same cache
    assert run(image_folder, out, settings=PreprocessSettings(size=32, hair_kernel_size=9)).skipped == 3


def test_hair_removal_cache(image_folder, tmp_path):
    out = tmp_path / "out"
    summary = run(image_folder, out, settings=PreprocessSettings(size=32, hair_removal=True, hair_kernel_size=9))
    assert summary.processed == 3
    recorded = json.loads((out / SETTINGS_FILE).read_text())["hair_removal"]
    assert recorded == {"kernel_size": 9, "threshold": 10, "inpaint_radius": 3}
    with pytest.raises(ConfigError, match="kernel_size"):
        run(image_folder, out, settings=PreprocessSettings(size=32, hair_removal=True, hair_kernel_size=17))


@pytest.mark.parametrize(
    ("settings", "workers", "message"),
    [
        (PreprocessSettings(size=0), 1, "size must be a positive integer"),
        (PreprocessSettings(size=32, hair_removal=True, hair_kernel_size=4), 1, "kernel_size must be an odd"),
        (PreprocessSettings(size=32), 0, "workers must be a positive integer"),
    ],
)
def test_bad_settings_are_config_errors(image_folder, tmp_path, settings, workers, message):
    with pytest.raises(ConfigError, match=message):
        run(image_folder, tmp_path / "out", settings=settings, workers=workers)
    assert not (tmp_path / "out").exists()


def test_csv_input_with_stems_and_relative_paths(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("image,diagnosis\na,NV\nsub/b.png,MEL\nmissing_one,NV\na.jpg,NV\n")
    out = tmp_path / "out"
    summary = run(table, out, img_dir=image_folder)
    assert (summary.processed, summary.failed) == (2, 1)  # the duplicate row is one image
    assert (out / "a.jpg").is_file() and (out / "sub" / "b.png").is_file()
    assert read_report(out) == [{"file": str(image_folder / "missing_one"), "error": "file not found"}]
    # without --img-dir, paths are relative to the CSV's folder
    (image_folder / "list.csv").write_text("image\nc\n")
    assert [rel for _, rel in find_images(image_folder / "list.csv")] == [Path("c.bmp")]
    # ... or, as training reads a label file, to images/ beside it when there is one
    beside = tmp_path / "dataset"
    (beside / "images").mkdir(parents=True)
    shutil.copy(image_folder / "c.bmp", beside / "images" / "c.bmp")
    (beside / "labels.csv").write_text("image\nc\n")
    assert find_images(beside / "labels.csv") == [(beside / "images" / "c.bmp", Path("c.bmp"))]


def test_a_run_where_every_image_fails_exits_1(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("image\nnope_1\nnope_2\n")
    assert main(["--input", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "out")]) == 1
    assert "none of the 2 images could be read or written" in capsys.readouterr().err


def test_csv_without_image_column_is_a_format_error(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("file,diagnosis\na.jpg,NV\n")
    with pytest.raises(DataFormatError, match="no 'image' column"):
        run(table, tmp_path / "out")
    table.write_text("")
    with pytest.raises(DataFormatError, match="line 1.*the file is empty"):
        run(table, tmp_path / "out")
    table.write_text("image,diagnosis\na.jpg,NV\n,MEL\n")
    with pytest.raises(DataFormatError, match=r"line 3, field 'image': empty image path"):
        run(table, tmp_path / "out")


def test_cache_inside_input_folder_is_not_rescanned(image_folder):
    out = image_folder / "cache"
    assert run(image_folder, out).processed == 3
    again = run(image_folder, out)
    assert (again.processed, again.skipped, again.failed) == (0, 3, 1)
    with pytest.raises(ConfigError, match="is the input folder"):
        run(image_folder, image_folder)


def test_failed_write_leaves_no_partial_file(image_folder, tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    target = tmp_path / "out" / "a.jpg"
    error = preprocess_one(image_folder / "a.jpg", target, PreprocessSettings(size=32))
    assert error is not None and "No space left on device" in error and str(target) in error
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_parallel_run_matches_serial(image_folder, tmp_path):
    serial = run(image_folder, tmp_path / "serial")
    parallel = run(image_folder, tmp_path / "parallel", workers=2)
    assert (parallel.processed, parallel.failed) == (serial.processed, serial.failed) == (3, 1)
    for name in ("a.jpg", "sub/b.png", "c.bmp"):
        np.testing.assert_array_equal(load_image(tmp_path / "parallel" / name), load_image(tmp_path / "serial" / name))


def test_main_exit_codes(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--input", str(image_folder), "--output", str(out), "--size", "32", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    assert "processed 3, skipped 0" in capsys.readouterr().out
    assert main(args) == 0
    assert "processed 0, skipped 3" in capsys.readouterr().out
    assert main([*args[:-3], "--size", "24", "--workers", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["--input", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert "not a folder or a .csv file (not found)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


@pytest.mark.integration
def test_real_images_load_and_preprocess(shared_data, tmp_path):
    with open(shared_data / "labels.csv", newline="") as fh:
        rows = list(itertools.islice(csv.DictReader(fh), 3))
    for row in rows:
        image = load_image(shared_data / "images" / row["image"])
        assert image.shape == (int(row["height"]), int(row["width"]), 3)
        assert image.std() > 5  # real content, not a blank decode
    table = tmp_path / "subset.csv"
    table.write_text("image\n" + "".join(Path(row["image"]).stem + "\n" for row in rows))
    summary = run(table, tmp_path / "out", img_dir=shared_data / "images", settings=PreprocessSettings(size=64))
    assert (summary.processed, summary.failed) == (3, 0)
    for row in rows:
        width, height = image_size(tmp_path / "out" / row["image"])
        assert min(width, height) == 64
        assert width / height == pytest.approx(int(row["width"]) / int(row["height"]), rel=0.03)
