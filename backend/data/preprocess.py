"""Build a resized (optionally hair-free) image cache once, so training does not decode big originals every epoch.

Each input image is decoded (at reduced size where possible), optionally run through DullRazor
hair removal, resized so its shorter side is ``size`` (never upscaled) and written under the
output folder with its relative path and file name unchanged, so the cache can replace the
original image folder as ``data.img_dir``. Lossy sources stay JPEG (quality 95); ``.png`` is written
as PNG and ``.bmp``/``.tif``/``.tiff`` losslessly in their own format, so a name never lies about its content.

The run is safe to repeat and to kill: files already in the cache are skipped, every file is
written to a temporary name and renamed into place, unreadable images are listed in
``preprocess_report.csv`` instead of stopping the run, and a ``preprocess_settings.json`` records
the settings so a rerun with different ones is refused rather than mixing two caches.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.data.hair import check_hair_params, remove_hair
from backend.data.image_paths import default_img_dir
from backend.data.images import load_image
from backend.data.schema import IMAGE_EXTENSIONS
from backend.errors import ConfigError, DataFormatError, ImageLoadError

SETTINGS_FILE = "preprocess_settings.json"
REPORT_FILE = "preprocess_report.csv"
#: Bumped when the cache's content changes for the same settings (older caches are then refused).
CACHE_FORMAT = 1
JPEG_QUALITY = 95
# Output writer per lower-cased suffix: Pillow format name and save options.
_WRITERS: dict[str, tuple[str, dict[str, object]]] = {
    ".jpg": ("JPEG", {"quality": JPEG_QUALITY}),
    ".jpeg": ("JPEG", {"quality": JPEG_QUALITY}),
    ".png": ("PNG", {}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {"compression": "tiff_deflate"}),
    ".tiff": ("TIFF", {"compression": "tiff_deflate"}),
}


@dataclass(frozen=True)
class PreprocessSettings:
    """What a cache is built with; recorded in :data:`SETTINGS_FILE` and compared on every rerun.

    Attributes:
        size: Shorter side of the written images, in pixels (smaller images are kept as they are).
        hair_removal: Run DullRazor hair removal (:func:`backend.data.hair.remove_hair`) before resizing.
        hair_kernel_size: Its structuring-element side at the reference resolution (odd, >= 3).
        hair_threshold: Its black-hat threshold in grey levels.
        hair_inpaint_radius: Its inpainting radius in pixels.
    """

    size: int = 256
    hair_removal: bool = False
    hair_kernel_size: int = 17
    hair_threshold: int = 10
    hair_inpaint_radius: int = 3

    def validate(self) -> None:
        """Reject values the pipeline cannot honour, naming the setting."""
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"preprocess: size must be a positive integer, got {self.size!r}")
        if self.hair_removal:

            check_hair_params(self.hair_kernel_size, self.hair_threshold, self.hair_inpaint_radius)

    def to_record(self) -> dict[str, object]:
        """The JSON-able form stored in the cache; hair parameters only count when hair removal is on."""
        hair = (
            {
                "kernel_size": self.hair_kernel_size,
                "threshold": self.hair_threshold,
                "inpaint_radius": self.hair_inpaint_radius,
            }
            if self.hair_removal
            else None
        )
        return {"cache_format": CACHE_FORMAT, "size": self.size, "jpeg_quality": JPEG_QUALITY, "hair_removal": hair}


@dataclass
class PreprocessSummary:
    """Outcome of one :func:`preprocess_images` run.

    Attributes:
        processed: Images written by this run.
        skipped: Images already present in the output folder (left untouched).
        failed: Images that could not be read or written (listed in ``report``).
        output_dir: The cache folder.
        report: The CSV listing failures (``file,error``), rewritten by every run.
        failures: ``(file, error)`` pairs, as in the report.
    """

    processed: int
    skipped: int
    failed: int
    output_dir: Path
    report: Path
    failures: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        """One human-readable line for the CLI."""
        text = f"processed {self.processed}, skipped {self.skipped} (already in {self.output_dir})"
        return text + f", failed {self.failed}" + (f" (see {self.report})" if self.failed else "")


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Downscale so the shorter side is ``size`` (aspect kept); images already small enough are returned as is."""
    height, width = image.shape[:2]
    short = min(height, width)
    if short <= size:
        return image
    if width <= height:
        new_w, new_h = size, max(1, round(height * size / width))
    else:
        new_w, new_h = max(1, round(width * size / height)), size
    from PIL import Image

    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(resized).copy()


def find_images(input_path: str | os.PathLike[str], img_dir: str | os.PathLike[str] | None = None,
                exclude: str | os.PathLike[str] | None = None) -> list[tuple[Path, Path]]:
    """List the images to process as ``(source file, path relative to the cache root)`` pairs.

    Args:
        input_path: A folder (scanned recursively for :data:`IMAGE_EXTENSIONS`, any case) or a
            CSV with an ``image`` column. CSV paths may be absolute or relative (to ``img_dir``, else
            to the CSV's folder), and a bare stem such as ``ISIC_0000000`` tries each supported
            extension. Rows naming a missing file are kept, so the run reports them.
        img_dir: Base folder for a CSV's relative paths.
        exclude: A folder whose files are never listed (the cache itself, when it sits inside the input).

    Returns:
        Sorted, de-duplicated pairs. A CSV path outside the base folder keeps only its file name.

    Raises:
        ConfigError: ``input_path`` is neither a folder nor a ``.csv`` file.
        DataFormatError: The CSV has no ``image`` column or an empty ``image`` cell.
    """
    source = Path(input_path)
    if source.is_dir():
        skip = Path(exclude).resolve() if exclude is not None else None
        if skip is not None and not skip.is_relative_to(source.resolve()):
            skip = None  # the excluded folder is elsewhere: no need to resolve every file
        found = []
        for path in source.rglob("*"):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith(".") or not path.is_file():
                continue
            if skip is not None and path.resolve().is_relative_to(skip):
                continue
            found.append((path, path.relative_to(source)))
        return sorted(found)
    if source.is_file() and source.suffix.lower() == ".csv":
        # As training reads a label file: images/ beside it when there is one, else its own folder.
        bases = [Path(img_dir)] if img_dir is not None else list(dict.fromkeys([default_img_dir(source),
                                                                                source.parent]))
        return _images_from_csv(source, bases)
    missing = "" if source.exists() else " (not found)"
    raise ConfigError(f"preprocess input {source}: not a folder or a .csv file{missing}")


def _images_from_csv(csv_path: Path, bases: list[Path]) -> list[tuple[Path, Path]]:
    """Resolve a CSV's ``image`` column against the first of ``bases`` holding each file (see :func:`find_images`)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise DataFormatError(csv_path, "the file is empty (expected a header with an 'image' column)", line=1)
            if "image" not in reader.fieldnames:
                raise DataFormatError(csv_path, f"no 'image' column (columns: {reader.fieldnames})", line=1)
            names = [(reader.line_num, (row.get("image") or "").strip()) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataFormatError(csv_path, f"cannot read CSV: {err}") from None
    pairs: dict[Path, Path] = {}
    for line, name in names:
        if not name:
            raise DataFormatError(csv_path, "empty image path", line=line, field="image")
        candidates = [(_with_extension(base / name), base) for base in bases]
        path, base = next((c for c in candidates if c[0].exists()), candidates[0])
        try:
            rel = path.resolve().relative_to(base.resolve())
        except ValueError:
            rel = Path(path.name)
        pairs.setdefault(path, rel)
    return sorted(pairs.items())


def _with_extension(path: Path) -> Path:
    """``path`` itself, or for a bare stem the first existing ``stem + ext`` over the supported extensions."""
    if path.suffix.lower() in IMAGE_EXTENSIONS or path.exists():
        return path
    for ext in IMAGE_EXTENSIONS:
        for candidate in (path.with_name(path.name + ext), path.with_name(path.name + ext.upper())):
            if candidate.is_file():
                return candidate
    return path


def cache_hair_removal(img_dir: str | os.PathLike[str] | None) -> bool:
    """Whether ``img_dir`` is a cache this module built with hair removal (False for any other folder)."""
    if img_dir is None:
        return False
    settings_path = Path(img_dir) / SETTINGS_FILE
    try:
        record = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and bool(record.get("hair_removal"))


@functools.lru_cache(maxsize=256)
def _hairless_folder(folder: str) -> bool:
    """Whether ``folder`` or one of its parents (up to 4 levels) is a cache made with hair removal."""
    path = Path(folder)
    return any(cache_hair_removal(p) for p in [path, *list(path.parents)[:4]])


def in_hairless_cache(image_path: str | os.PathLike[str]) -> bool:
    """Whether an image file lies in a cache made with hair removal (its hair is gone already)."""
    return _hairless_folder(str(Path(image_path).resolve().parent))


def is_hairless_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is, or lies inside, a cache made with hair removal (as :func:`in_hairless_cache`)."""
    return _hairless_folder(str(Path(folder).resolve()))


def check_settings(output_dir: Path, settings: PreprocessSettings) -> None:
    """Record ``settings`` in a new cache, or refuse a cache that was built with different ones."""
    record = settings.to_record()
    settings_path = output_dir / SETTINGS_FILE
    if settings_path.exists():
        try:
            existing = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{settings_path}: unreadable cache settings ({err}); delete the folder to rebuild"
            ) from None
        if existing != record:
            diffs = ", ".join(
                f"{key}: cache has {existing.get(key)!r}, asked {record.get(key)!r}"
                for key in sorted(set(existing) | set(record))
                if existing.get(key) != record.get(key)
            )
            raise ConfigError(
                f"{output_dir} holds a cache built with other settings ({diffs}); "
                "use another output folder or delete this one"
            )
        return
    _atomic_write_text(settings_path, json.dumps(record, indent=2) + "\n")


def preprocess_one(source: Path, target: Path, settings: PreprocessSettings) -> str | None:
    """Decode, clean, resize and atomically write one image.

    Returns:
        None on success, else the reason the image was skipped (unreadable or unwritable).
    """
    try:
        image = load_image(source, target_size=settings.size)
        if settings.hair_removal:

            image = remove_hair(
                image, settings.hair_kernel_size, settings.hair_threshold, settings.hair_inpaint_radius
            )
        image = resize_shorter_side(image, settings.size)
        _write_image(image, target)
    except ImageLoadError as err:
        return err.reason
    except OSError as err:
        return f"cannot write {target}: {err}"
    return None


def _write_image(image: np.ndarray, target: Path) -> None:
    """Write via a temporary sibling and ``os.replace`` so a killed run never leaves a half-written file."""
    from PIL import Image

    fmt, options = _WRITERS.get(target.suffix.lower(), ("PNG", {}))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format=fmt, **options)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file via a temporary sibling and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _work(task: tuple[Path, Path, PreprocessSettings]) -> str | None:
    """Picklable worker entry point for the process pool."""
    return preprocess_one(*task)


def default_workers() -> int:
    """Two workers, or one on a single-core machine."""
    return min(2, os.cpu_count() or 1)


def preprocess_images(input_path: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                      settings: PreprocessSettings | None = None, *, img_dir: str | os.PathLike[str] | None = None,
                      workers: int | None = None, progress: bool = True) -> PreprocessSummary:
    """Build or complete an image cache (see the module docstring).

    Args:
        input_path: Image folder or CSV with an ``image`` column (see :func:`find_images`).
        output_dir: Cache folder, created if needed.
        settings: Size and hair removal; defaults to :class:`PreprocessSettings`.
        img_dir: Base folder of a CSV's relative paths (default: the CSV's folder).
        workers: Worker processes; ``1`` runs in this process. Default :func:`default_workers`.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        Counts of processed, skipped and failed images.

    Raises:
        ConfigError: Bad settings or folders, or ``output_dir`` holds a cache with other settings.
        DataFormatError: A malformed input CSV.
    """
    settings = settings or PreprocessSettings()
    settings.validate()
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"preprocess: workers must be a positive integer, got {workers!r}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"preprocess output {out}: exists and is not a folder")
    if Path(input_path).is_dir() and out.resolve() == Path(input_path).resolve():
        raise ConfigError(f"preprocess output {out} is the input folder: choose a separate cache folder")
    items = find_images(input_path, img_dir=img_dir, exclude=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"preprocess output {out}: cannot create folder ({err.strerror or err})") from None
    check_settings(out, settings)

    failures: list[tuple[str, str]] = []
    todo: list[tuple[Path, Path, PreprocessSettings]] = []
    targets: dict[Path, Path] = {}
    skipped = 0
    for source, rel in items:
        target = out / rel
        if target in targets:
            failures.append((str(source), f"output name {rel} already taken by {targets[target]}"))
            continue
        targets[target] = source
        if target.exists():
            skipped += 1
        else:
            todo.append((source, target, settings))

    processed = 0
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="preprocess", unit="img", disable=not progress) as bar:
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(todo) > 1 else None
        try:
            if pool is None:
                results = map(_work, todo)
            else:
                results = pool.map(_work, todo, chunksize=max(1, min(32, len(todo) // (4 * workers))))
            for (source, _, _), error in zip(todo, results, strict=True):
                bar.update(1)
                if error is None:
                    processed += 1
                else:
                    failures.append((str(source), error))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    report = out / REPORT_FILE
    _write_report(report, failures)
    return PreprocessSummary(processed, skipped, len(failures), out, report, failures)


def _write_report(report: Path, failures: list[tuple[str, str]]) -> None:
    """Write this run's failures as ``file,error`` (header only when none), atomically."""
    tmp = report.with_name(f".{report.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "error"])
        writer.writerows(failures)
    os.replace(tmp, report)
