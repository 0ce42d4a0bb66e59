"""Batch prediction: ``python -m scripts.predict --input FOLDER_OR_CSV --output preds.csv``.

``--input`` is a folder of images (JPEG, PNG, BMP, TIFF; not recursive) or a CSV with an ``image``
column and optional ``age_approx``, ``sex``, ``anatom_site_general`` (relative paths resolve
against ``--img_dir``, default the CSV's folder). One output row per image::

    image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK,malignant,risk,traffic_light,model_light,thickness_mm,thickness_band,
    flags,quality_reasons

(one line in the file; ``UNK`` is 0: the model has no UNK output; ``flags`` lists quality-gate codes
separated by ``;``, e.g. ``too_dark;blurred``, and ``quality_reasons`` the same flags' reasons in plain
words, in the same order, separated by ``"; "``; both are empty for an image the gate did not flag).
``traffic_light`` is ``grey`` (not assessable: retake the image) for any flagged image;
``model_light`` is the model's own light from the risk alone.
With ``--reference LIBRARY`` (built by ``scripts.build_reference`` with the same model) three
columns follow: ``knn_malignant`` (share of the ``--k`` most similar confirmed cases that are
malignant), ``knn_diagnosis`` (their most common diagnosis) and ``neighbours`` (their image ids,
most similar first, joined by ``;``). A CSV input's ``lesion_id``/``patient_id`` columns keep an
image's own lesion and patient out of its neighbours, as are library copies of the image itself.
Rows are appended batch by batch, so an interrupted run keeps what it did and a rerun skips the
images already in the output; the model, TTA setting, calibration, side and library it was written
with are kept beside it (``preds.csv.json``), and a rerun with others is refused rather than mixing two
models' rows in one file. Unreadable files and bad metadata rows are reported on stderr and
skipped; they never stop the run. Examples::

    python -m scripts.predict --input ../shared/data/images --output preds.csv --tta
    python -m scripts.predict --input cases.csv --img_dir photos/ --output preds.csv --cam_dir cams/
    python -m scripts.predict --input photos/ --output preds.csv --reference refs/clinic_a
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.data.image_paths import FolderIndex, default_img_dir
from backend.errors import DataFormatError
from scripts.cli import run_reporting_errors

METADATA_COLUMNS: tuple[str, ...] = ("age_approx", "sex", "anatom_site_general")
#: Columns of a CSV input that keep an image's own lesion/patient out of its ``--reference`` neighbours.
GROUP_COLUMNS: tuple[str, ...] = ("lesion_id", "patient_id")


@dataclass
class Job:
    """One image to predict: its output name, its file and its metadata (None when the input has none)."""

    name: str
    path: Path
    metadata: dict[str, Any] | None = None
    where: str = ""
    lesion_id: str | None = None
    patient_id: str | None = None


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder of images, or a CSV with an 'image' column")
    p.add_argument("--output", default="preds.csv", help="predictions CSV (appended to; default preds.csv)")
    p.add_argument("--checkpoint", help="model bundle folder or .ckpt (default: the bundled default model)")
    p.add_argument("--img_dir", help="folder relative image paths of a CSV resolve against (default: images/ "
                   "beside the CSV when there is one, else its folder, as training reads it)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the 8 flips/rotations (slower, steadier); default: as the model's card was "
                        "measured (a bundle's inference.tta)")
    p.add_argument("--cam_dir", help="also write a Grad-CAM overlay per image here, of its class-balanced "
                                     "suggested diagnosis (the class balanced accuracy scores; the dashboard "
                                     "leads with the most probable class when that suggestion is under 10%%)")
    p.add_argument("--opacity", type=float, default=0.4, help="Grad-CAM overlay opacity (default 0.4)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=0,
                   help="DataLoader worker processes decoding and preprocessing images (default 0: none)")
    p.add_argument("--no_metadata", action="store_true", help="ignore the CSV's patient metadata")
    p.add_argument("--reference", help="reference library folder (scripts.build_reference): add the columns "
                                       "knn_malignant, knn_diagnosis and neighbours")
    p.add_argument("--k", type=int, default=10, help="neighbours per image with --reference (default 10)")
    return p


def collect_jobs(input_path: str | Path, img_dir: str | Path | None = None, use_metadata: bool = True
                 ) -> tuple[list[Job], list[str]]:
    """The images named by a folder or CSV, and messages for rows that cannot become jobs.

    Raises:
        DataFormatError: A CSV without an ``image`` column, or otherwise malformed.
        ConfigError: ``input_path`` is neither a folder nor a file.
    """
    from backend.data.csv_rows import LINE, read_csv_rows
    from backend.data.schema import IMAGE_EXTENSIONS
    from backend.errors import ConfigError

    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return [Job(p.name, p) for p in files], []
    if not path.is_file():
        raise ConfigError(f"--input {path}: no such folder or CSV file")
    raw = read_csv_rows(path, required=("image",))
    # As training reads a label file: images/ beside it when there is one, else its own folder.
    bases = [Path(img_dir)] if img_dir else list(dict.fromkeys([default_img_dir(path), path.parent]))
    index = FolderIndex()  # names with or without extension (ISIC_0000000), as training resolves them
    meta_cols = [c for c in METADATA_COLUMNS if c in raw.columns] if use_metadata else []
    jobs, problems, seen = [], [], set()
    for _, row in raw.iterrows():
        where = f"{path}, line {row[LINE]}"
        name = str(row["image"]).strip()
        if not name:
            problems.append(f"{where}, field 'image': empty image path")
            continue
        if name in seen:
            problems.append(f"{where}, field 'image': {name!r} is listed again; predicted once")
            continue
        seen.add(name)
        file = Path(name) if Path(name).is_absolute() else next(
            (found for b in bases if (found := index.find(str(b), name)) is not None), bases[0] / name)
        file = Path(file)
        meta = {c: row[c] for c in meta_cols} if meta_cols else None
        groups = {c: (str(row[c]).strip() or None) if c in raw.columns else None for c in GROUP_COLUMNS}
        jobs.append(Job(name, file, meta, where, **groups))
    return jobs, problems


def _done_images(output: Path, columns: tuple[str, ...] | None = None) -> set[str]:
    """Images already in an existing output; an interrupted last line is cut off first.

    Args:
        output: The predictions CSV.
        columns: Its expected header (default :data:`~backend.inference.records.OUTPUT_COLUMNS`).

    Raises:
        DataFormatError: The file exists with other columns (it is not ours to append to).
    """
    from backend.inference.records import OUTPUT_COLUMNS

    columns = OUTPUT_COLUMNS if columns is None else columns
    if not output.is_file() or output.stat().st_size == 0:
        return set()
    data = output.read_bytes()
    if not data.endswith(b"\n"):
        with open(output, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
    with open(output, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return set()
        if tuple(header) != columns:
            hint = ""
            if tuple(header[: len(OUTPUT_COLUMNS)]) == OUTPUT_COLUMNS:
                hint = " (it was written with a different --reference setting)"
            raise DataFormatError(output, f"exists with columns {header}, not a predictions file of this tool "
                                          f"with these options{hint} (choose another --output)", line=1)
        return {row[0] for row in reader if row}


def _settings_file(output: Path) -> Path:
    """Where the settings an output was written with are kept: ``preds.csv`` -> ``preds.csv.json``."""
    return output.with_name(output.name + ".json")


def check_output_settings(output: Path, settings: dict[str, Any], has_rows: bool) -> None:
    """Refuse to append to an output another model (or TTA, calibration, side, library) wrote.

    A resumed run adds rows to ``output``; rows of two models in one file could not be told apart.
    The settings are recorded beside it (:func:`_settings_file`) when the file is started.

    Raises:
        DataFormatError: The recorded settings differ, naming each difference.
    """
    record = _settings_file(output)
    if not has_rows or not record.is_file():
        if has_rows:
            print(f"warning: {output} has no {record.name}: cannot check which model wrote its rows", file=sys.stderr)
        return
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataFormatError(record, f"unreadable settings record ({err}); choose another --output") from None
    changed = [f"{key}: {saved.get(key)!r} then, {value!r} now" for key, value in settings.items()
               if saved.get(key) != value]
    if changed:
        raise DataFormatError(output, "was written with other settings, so its rows would mix two models' "
                                      f"results ({'; '.join(changed)}): choose another --output")


def _cam_file(cam_dir: Path, name: str) -> Path:
    """``<safe stem>_<8 hex of the name's SHA-256>_cam.png``, directly in ``cam_dir``.

    The stem keeps the file recognisable; the hash keeps ``x.png``/``x.jpg`` or ``a b.png``/``a_b.png``
    apart and the same name on a resumed run mapped to the same file. The stem is bounded, so a
    very long input name cannot exceed the file system's 255-byte limit.
    """
    import hashlib

    from backend.io.names import safe_stem

    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return cam_dir / f"{safe_stem(name)}_{digest}_cam.png"


def _neighbours(library: Any, batch: Any, jobs: list[Job], k: int) -> list[Any]:
    """Similar cases of a predicted batch (``backend.retrieval``), each job's own image, lesion and patient left out.

    The batch's own features are searched with (the plain forward pass's, as the library was built
    with), and its kept inputs give the decoded pixels: nothing is decoded or run again.
    """
    from backend.retrieval.build import pixels_sha256
    from backend.retrieval.query import excluded_rows, file_sha256, search

    exclude = [excluded_rows(library, job.lesion_id, job.patient_id, file_sha256(job.path), pixels_sha256(item.image))
               for job, item in zip(jobs, batch.inputs, strict=True)]
    return search(library, batch.raw.features, k, exclude, batch.names, thumbnails=False,
                  images=[item.image for item in batch.inputs])


def run(args: argparse.Namespace) -> int:
    """Predict every job not yet in the output; returns the exit code."""
    from tqdm.auto import tqdm

    from backend.errors import ConfigError, DermaLensError
    from backend.files import atomic_write_bytes
    from backend.inference.explain import encode_png
    from backend.inference.predictor import Predictor
    from backend.inference.records import OUTPUT_COLUMNS, csv_value
    from backend.model_store import DEFAULT_MODEL_DIR, describe_model_dir
    from backend.retrieval.library import model_identity

    if not 0.0 <= args.opacity <= 1.0:
        raise ConfigError(f"--opacity must be in [0, 1], got {args.opacity}")
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    if args.num_workers < 0:
        raise ConfigError(f"--num_workers must be >= 0, got {args.num_workers}")
    jobs, problems = collect_jobs(args.input, args.img_dir, use_metadata=not args.no_metadata)
    for message in problems:
        print(f"skipped: {message}", file=sys.stderr)
    output = Path(args.output)
    columns = OUTPUT_COLUMNS
    if args.reference:
        from backend.retrieval.query import RETRIEVAL_COLUMNS

        columns = (*OUTPUT_COLUMNS, *RETRIEVAL_COLUMNS)
    done = _done_images(output, columns)
    todo = [job for job in jobs if job.name not in done]
    if args.checkpoint is None:
        status = describe_model_dir(DEFAULT_MODEL_DIR)
        if not status.available:
            raise ConfigError(f"no default model ({status.reason}); pass --checkpoint")
        args.checkpoint = str(DEFAULT_MODEL_DIR)
    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=args.batch_size)
    identity = model_identity(predictor)
    settings = {"model": identity.name, "version": identity.version, "weights_sha256": identity.sha256,
                "tta": predictor.tta if args.tta is None else bool(args.tta),
                "temperature": float(predictor.temperature), "img_size": int(predictor.img_size),
                "reference": str(Path(args.reference).resolve()) if args.reference else None}
    check_output_settings(output, settings, bool(done))
    library = None
    if args.reference:
        from backend.retrieval.library import ReferenceLibrary

        library = ReferenceLibrary.load(args.reference)
        library.check_model(identity, str(Path(args.checkpoint).resolve()))
    cam_dir = Path(args.cam_dir) if args.cam_dir else None
    if cam_dir:
        cam_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    new_file = not output.is_file() or output.stat().st_size == 0
    written, skipped = 0, len(problems)
    batches = predictor.iter_outputs([job.path for job in todo], [job.metadata for job in todo],
                                     names=[job.name for job in todo], tta=args.tta,
                                     keep_inputs=bool(cam_dir or library), num_workers=args.num_workers)
    with open(output, "a", newline="", encoding="utf-8") as fh, \
            tqdm(total=len(todo), desc="predict", unit="img", file=sys.stderr) as bar:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(columns)
        if not done:  # no rows yet: the rows about to be written are this run's, and so is the record
            atomic_write_bytes(_settings_file(output), json.dumps(settings, indent=2).encode("utf-8"))
        for batch in batches:
            for failure in batch.failures:
                job = todo[failure.index]
                where = f"{job.where}: " if job.where and failure.path is None else ""
                # Through the bar, so each message is a line of its own, not glued to the progress bar.
                bar.write(f"skipped: {where}{failure.message}", file=sys.stderr)
                skipped += 1
            bar.update(batch.size)
            if not batch.indices:
                continue
            kept = [todo[i] for i in batch.indices]
            if cam_dir:  # written before the rows: an image whose row is in the output has its overlay too
                try:
                    # The class each row reports (with this run's --tta/--no-tta), not recomputed.
                    heatmaps = predictor.explain_batch(batch.inputs, [p.top_class for p in batch.predictions],
                                                       [job.metadata for job in kept])
                except DermaLensError as err:
                    bar.write(f"Grad-CAM skipped for this batch: {err}", file=sys.stderr)
                else:
                    for item, heat in zip(batch.inputs, heatmaps, strict=True):
                        atomic_write_bytes(_cam_file(cam_dir, item.name),
                                           encode_png(predictor.overlay(item.image, heat, args.opacity)))
            similar = _neighbours(library, batch, kept, args.k) if library is not None else None
            for i, pred in enumerate(batch.predictions):
                row = pred.to_row()
                if similar is not None:
                    row.update(similar[i].to_row())
                writer.writerow([csv_value(row[c]) for c in columns])
            fh.flush()
            written += len(batch.indices)
    print(f"{written} predicted, {len(jobs) - len(todo)} already in {output}, {skipped} skipped", file=sys.stderr)
    if written == 0 and skipped and not done:
        print(f"error: none of the {skipped} images could be predicted (see the messages above)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code.

    0 done (some images may be skipped), 1 not one image could be predicted, 2 bad input or options.
    """
    return run_reporting_errors(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
