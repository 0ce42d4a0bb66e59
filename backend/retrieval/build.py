"""Build (or finish, or update) a reference library from a validated lesion table, resumably.

Rows are processed in chunks: each image's bytes are read and hashed, decoded exactly as
``Predictor.load`` decodes a file, thumbnailed (pixels only, so no EXIF reaches the library) and
embedded with ``Predictor.raw_outputs(...).features`` (the pooled backbone features of the plain
forward pass; patient metadata does not change them, so none is passed). Each finished chunk is
one ``.build/chunk_*.npz`` file written atomically, so an interrupted build loses at most one
chunk, and a rerun embeds only the table rows that no chunk or earlier build holds. The last step
consolidates everything into the files :mod:`backend.retrieval.library` reads, then marks the
manifest complete.

Unreadable images and missing files are reported and skipped (never fatal); they are tried again
by the next run, and the manifest counts and lists those of the last run.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from backend.data.schema import MALIGNANT_DIAGNOSES
from backend.errors import ConfigError, ImageLoadError
from backend.files import atomic_write_bytes, atomic_write_text, sha256_file
from backend.retrieval.library import (
    BUILD_DIR,
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    INDEX_CSV,
    MANIFEST,
    THUMBNAILS,
    LibraryModelMismatchError,
    ModelIdentity,
    ReferenceLibraryError,
    build_command,
    is_library,
    manifest_command,
    model_identity,
    read_manifest,
    read_parts,
)

#: Images embedded and written per chunk (the most an interruption can lose).
CHUNK_SIZE = 256
#: Longest side of the stored thumbnails, in pixels.
THUMB_SIZE = 128
#: Skipped-row messages kept in the manifest (all of them are counted).
MAX_LISTED_SKIPS = 200
_CHUNK_FIELDS = ("image_id", "image", "diagnosis", "label", "lesion_id", "patient_id", "sha256", "pixels_sha256")


@dataclass
class BuildReport:
    """What a build run did.

    Attributes:
        path: The library folder.
        n_rows: Rows in the finished library.
        n_embedded: Images embedded by this run.
        n_reused: Rows taken from an earlier (interrupted or complete) run.
        n_skipped: Table rows left out (unreadable or missing images).
        skipped: One message per skipped row.
    """

    path: Path
    n_rows: int = 0
    n_embedded: int = 0
    n_reused: int = 0
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)


def pixels_sha256(image: np.ndarray) -> str:
    """SHA-256 of a decoded image's shape and pixels (matches the same picture from any file).

    Args:
        image: HxWx3 uint8 array as ``Predictor.load`` returns it.
    """
    digest = hashlib.sha256(repr(tuple(image.shape)).encode("ascii"))
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def thumbnail_jpeg(image: np.ndarray, side: int = THUMB_SIZE) -> bytes:
    """A JPEG thumbnail (longest side ``side``) written from pixels only: no EXIF or other metadata.

    Args:
        image: HxWx3 uint8 RGB array.
        side: Longest side of the thumbnail in pixels.
    """
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as float32 (a zero row stays zero).

    Args:
        features: ``(N, D)`` array.
    """
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _image_name(path: str, img_dir: Path | None) -> str:
    """The image's name relative to the image folder (else its file name): never an absolute path."""
    if img_dir is not None:
        try:
            return Path(path).resolve().relative_to(img_dir.resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).name


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        import pandas as pd

        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()


# -- chunks ----------------------------------------------------------------------------------------


def _chunk_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk_*.npz")) if folder.is_dir() else []


def _write_chunk(folder: Path, seq: int, data: dict[str, np.ndarray]) -> Path:
    """One finished chunk, written atomically (a reader sees all of it or nothing)."""
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    return atomic_write_bytes(folder / f"chunk_{seq:06d}.npz", buffer.getvalue())


def _read_chunk(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, KeyError):
        return None  # a damaged chunk is simply redone


def _pack(records: list[dict[str, Any]], features: np.ndarray, thumbs: list[bytes]) -> dict[str, np.ndarray]:
    data = {f: np.array([r[f] for r in records], dtype=str if f != "label" else np.int8) for f in _CHUNK_FIELDS}
    data["embeddings"] = normalise(features)
    data["thumb_sizes"] = np.array([len(t) for t in thumbs], dtype=np.int64)
    data["thumbs"] = np.frombuffer(b"".join(thumbs), dtype=np.uint8)
    return data


def _row_fields(row: dict[str, Any], img_dir: Path | None) -> dict[str, Any]:
    """What a library row takes from its table row: id, image name, diagnosis, label, lesion and patient."""
    diagnosis = _text(row.get("diagnosis")).upper()
    return {
        "image_id": _text(row["image_id"]), "image": _image_name(str(row["image"]), img_dir), "diagnosis": diagnosis,
        "label": int(row["label"]) if _text(row.get("label")) else int(diagnosis in MALIGNANT_DIAGNOSES),
        "lesion_id": _text(row.get("lesion_id")), "patient_id": _text(row.get("patient_id")),
    }


def _file_sha256(path: str) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read (the embedding pass reports it)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def _embed_chunk(predictor: Any, rows: list[dict[str, Any]], img_dir: Path | None, thumb_size: int,
                 skipped: list[str]) -> dict[str, np.ndarray] | None:
    """Read, hash, decode, thumbnail and embed one chunk of table rows; bad rows go to ``skipped``."""
    records, arrays, thumbs = [], [], []
    for row in rows:
        path = str(row["image"])
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            skipped.append(str(ImageLoadError(path, "file not found")))
            continue
        except OSError as err:
            skipped.append(str(ImageLoadError(path, f"cannot be read ({err.strerror or err})")))
            continue
        try:
            _, image = predictor.load((path, data))
        except (ImageLoadError, ConfigError) as err:
            skipped.append(str(err))
            continue
        records.append({**_row_fields(row, img_dir), "sha256": hashlib.sha256(data).hexdigest(),
                        "pixels_sha256": pixels_sha256(image)})
        arrays.append(image)
        thumbs.append(thumbnail_jpeg(image, thumb_size))
    if not records:
        return None
    raw, kept, problems = predictor.raw_outputs(arrays)
    if problems or len(kept) != len(arrays):  # arrays are already decoded: this would be a bug
        raise ReferenceLibraryError(f"embedding failed for decoded images: {problems}")
    return _pack(records, raw.features, thumbs)


# -- consolidation -----------------------------------------------------------------------------


def _parts(output: Path) -> list[dict[str, np.ndarray]]:
    """Everything already embedded: the consolidated files of an earlier build, then each chunk."""
    parts = []
    embeddings, rows, thumbs = read_parts(output)
    if rows is not None and len(rows):
        blob = np.frombuffer(bytes(thumbs), dtype=np.uint8) if len(rows) else np.zeros(0, np.uint8)
        part = {f: rows[f].to_numpy(dtype=str) for f in _CHUNK_FIELDS if f != "label"}
        part["label"] = rows["label"].to_numpy(dtype=np.int8)
        part["embeddings"] = np.asarray(embeddings, dtype=np.float32)
        offsets, sizes = rows["thumb_offset"].to_numpy(np.int64), rows["thumb_size"].to_numpy(np.int64)
        part["thumbs"] = np.concatenate([blob[o : o + s] for o, s in zip(offsets, sizes, strict=True)]) \
            if len(offsets) else np.zeros(0, np.uint8)
        part["thumb_sizes"] = sizes
        parts.append(part)
    for chunk in _chunk_files(output / BUILD_DIR):
        data = _read_chunk(chunk)
        if data is not None and len(data["image_id"]):
            parts.append(data)
    return parts


def _consolidate(parts: list[dict[str, np.ndarray]], order: dict[str, int], dim: int,
                 current: dict[str, dict[str, Any]] | None = None) -> tuple[np.ndarray, Any, bytes]:
    """Rows of ``parts`` still in the table, once each (the latest wins), in table order.

    ``current`` (image id -> :func:`_row_fields` of today's table) replaces the stored labels and
    ids: a corrected diagnosis, or a patient id added since, reaches the library without a new embedding.
    """
    import pandas as pd

    chosen: dict[str, tuple[int, int]] = {}
    for p, part in enumerate(parts):
        for i, image_id in enumerate(part["image_id"].tolist()):
            if image_id in order:
                chosen[image_id] = (p, i)
    ids = sorted(chosen, key=order.__getitem__)
    embeddings = np.zeros((len(ids), dim), np.float32)
    records, blobs, offset = [], [], 0
    thumb_starts = [np.concatenate([[0], np.cumsum(part["thumb_sizes"])]) for part in parts]
    for r, image_id in enumerate(ids):
        p, i = chosen[image_id]
        part = parts[p]
        embeddings[r] = part["embeddings"][i]
        start, size = int(thumb_starts[p][i]), int(part["thumb_sizes"][i])
        blobs.append(part["thumbs"][start : start + size].tobytes())
        record = {f: part[f][i].item() for f in _CHUNK_FIELDS}
        record.update((current or {}).get(image_id, {}))
        record["malignant"] = int(int(record["label"]) == 1 or record["diagnosis"] in MALIGNANT_DIAGNOSES)
        record.update(thumb_offset=offset, thumb_size=size)
        offset += size
        records.append(record)
    rows = pd.DataFrame(records, columns=list(INDEX_COLUMNS))
    return embeddings, rows, b"".join(blobs)


def _write_library(output: Path, embeddings: np.ndarray, rows: Any, thumbs: bytes) -> None:
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    atomic_write_bytes(output / EMBEDDINGS, buffer.getvalue())
    atomic_write_bytes(output / THUMBNAILS, thumbs)
    atomic_write_text(output / INDEX_CSV, rows.to_csv(index=False, lineterminator="\n"))


def _write_manifest(output: Path, manifest: dict[str, Any]) -> None:
    import json

    atomic_write_text(output / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _clear(output: Path) -> None:
    """Delete a library's own files (for ``rebuild``); anything else in the folder is left alone."""
    for name in (MANIFEST, EMBEDDINGS, INDEX_CSV, THUMBNAILS, "ann_hnsw.faiss", "ann_hnsw.json"):
        (output / name).unlink(missing_ok=True)
    for chunk in _chunk_files(output / BUILD_DIR):
        chunk.unlink(missing_ok=True)


# -- entry point -------------------------------------------------------------------------------


def build_library(table: Any, output: str | Path, predictor: Any, *, model_path: str | None = None,
                  img_dir: str | Path | None = None, chunk_size: int = CHUNK_SIZE, thumb_size: int = THUMB_SIZE,
                  rebuild: bool = False, progress: bool = True) -> BuildReport:
    """Build, finish or update the library at ``output`` from ``table`` with ``predictor``'s embeddings.

    Args:
        table: Lesion table (``backend.data.formats.load_table``; load it with ``check_images=False``
            so rows whose file is missing are reported here, one message each).
        output: Library folder (created; must be empty or a library).
        predictor: The ``backend.inference.predictor.Predictor`` whose backbone features are stored.
        model_path: That model's bundle folder or ``.ckpt`` (recorded for rebuild commands).
        img_dir: Image folder; stored image names are relative to it.
        chunk_size: Images per resumable chunk.
        thumb_size: Longest side of the stored thumbnails.
        rebuild: Discard an existing library in ``output`` (e.g. one built with another model).
        progress: Show a tqdm progress bar on stderr.

    Raises:
        ReferenceLibraryError: ``output`` is a file or a non-empty folder that is not a library, or
            bad arguments.
        LibraryModelMismatchError: ``output`` holds a library of another model and ``rebuild`` is off.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    if chunk_size < 1 or thumb_size < 8:
        raise ReferenceLibraryError(f"chunk_size must be >= 1 and thumb_size >= 8, got {chunk_size}, {thumb_size}")
    if output.exists() and not output.is_dir():
        raise ReferenceLibraryError(f"--output {output} is a file, not a library folder")
    if output.is_dir() and not is_library(output) and any(output.iterdir()):
        raise ReferenceLibraryError(f"--output {output} is a non-empty folder that is not a reference library; "
                                    "choose a new or empty folder")
    identity = model_identity(predictor)
    source = {
        "csv": str(Path(table.attrs.get("source", "LABELS.csv")).resolve()) if table.attrs.get("source") else None,
        "img_dir": str(Path(img_dir).resolve()) if img_dir else None,
        "format": table.attrs.get("format"),
        "checkpoint": model_path,
    }
    previous: dict[str, Any] = {}
    if is_library(output):
        if rebuild:
            _clear(output)
        else:
            previous = read_manifest(output)
            built = ModelIdentity.from_dict(previous.get("model") or {})
            if built.sha256 != identity.sha256:
                command = build_command(source["csv"], output, model_path or "<this model>",
                                        source["img_dir"], rebuild=True)
                raise LibraryModelMismatchError(
                    f"{output} holds a reference library built with model {built.describe()}, not with "
                    f"{identity.describe()}; embeddings of different models cannot be mixed. Rebuild it with "
                    f"this model ({command}) or choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    chunk_dir = output / BUILD_DIR
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
        "build_id": previous.get("build_id", ""), "created": previous.get("created", now), "updated": now,
        "model": {**identity.to_dict(), "feature_dim": (previous.get("model") or {}).get("feature_dim")},
        "source": source, "thumb_size": int(thumb_size),
        "embedding": "L2-normalised pooled backbone features (Predictor.raw_outputs(...).features)",
    }
    _write_manifest(output, manifest)

    order = {str(image_id): i for i, image_id in enumerate(table["image_id"].astype(str))}
    parts = _parts(output)
    stored = {image_id: sha for part in parts  # the latest part wins, as in _consolidate
              for image_id, sha in zip(part["image_id"].tolist(), part["sha256"].tolist(), strict=True)}
    folder = Path(img_dir) if img_dir else None
    records = table.to_dict("records")
    # A row is done when an embedding of today's file exists: a replaced image file is embedded again.
    done = {str(row["image_id"]) for row in records
            if str(row["image_id"]) in stored and _file_sha256(str(row["image"])) == stored[str(row["image_id"])]}
    todo = [row for row in records if str(row["image_id"]) not in done]
    current = {str(row["image_id"]): _row_fields(row, folder) for row in records}
    report = BuildReport(output, n_reused=len(done))
    seq = max((int(p.stem.split("_")[1]) for p in _chunk_files(chunk_dir)), default=-1) + 1
    with tqdm(total=len(todo), desc="reference library", unit="img", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(todo), chunk_size):
            rows = todo[start : start + chunk_size]
            before = len(report.skipped)
            data = _embed_chunk(predictor, rows, folder, thumb_size, report.skipped)
            for message in report.skipped[before:]:
                bar.write(f"skipped: {message}", file=sys.stderr)
            if data is not None:
                chunk_dir.mkdir(exist_ok=True)
                _write_chunk(chunk_dir, seq, data)
                seq += 1
                parts.append(data)
                report.n_embedded += len(data["image_id"])
            bar.update(len(rows))

    dims = {int(p["embeddings"].shape[1]) for p in parts if len(p["image_id"])}
    if len(dims) > 1:
        raise ReferenceLibraryError(f"{output}: stored embeddings have different lengths {sorted(dims)}; rebuild "
                                    f"with {manifest_command(manifest, output, model_path, rebuild=True)}")
    dim = dims.pop() if dims else int(manifest["model"].get("feature_dim") or 0)
    embeddings, rows, thumbs = _consolidate(parts, order, dim, current)
    _write_library(output, embeddings, rows, thumbs)
    report.n_rows = len(rows)
    report.n_skipped = len(order) - report.n_rows
    counts = rows["diagnosis"].replace("", "unknown").value_counts()
    manifest.update({
        "complete": True, "build_id": uuid.uuid4().hex, "updated": datetime.now(timezone.utc).isoformat(
            timespec="seconds"),
        "model": {**identity.to_dict(), "feature_dim": dim or None},
        "n_rows": report.n_rows, "n_table_rows": len(order), "n_skipped": report.n_skipped,
        "skipped": report.skipped[:MAX_LISTED_SKIPS], "n_malignant": int(rows["malignant"].sum()),
        "diagnoses": {str(k): int(v) for k, v in counts.items()},
    })
    _write_manifest(output, manifest)
    for chunk in _chunk_files(chunk_dir):
        chunk.unlink(missing_ok=True)
    if chunk_dir.is_dir() and not any(chunk_dir.iterdir()):
        os.rmdir(chunk_dir)
    return report
