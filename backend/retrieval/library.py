"""A reference library on disk: the user's own confirmed cases, embedded by one model.

A library is one folder, written only by :mod:`backend.retrieval.build`::

    refs/clinic_a/
        library.json    manifest: format, the model it was built with, source, counts, skipped rows
        embeddings.npy  (N, D) float32, L2-normalised backbone features (row i = line i+2 of index.csv)
        index.csv       image_id, image, diagnosis, label, malignant, lesion_id, patient_id, sha256,
                        pixels_sha256, thumb_offset, thumb_size
        thumbs.bin      the rows' JPEG thumbnails (pixels only, no EXIF) packed end to end
        .build/         chunks of an unfinished build (gone once it completes)

Embeddings of different networks live in different spaces, so a library remembers the model it
was built with (:class:`ModelIdentity`: name, version, weights SHA-256, feature dimension) and
:meth:`ReferenceLibrary.check_model` refuses any other model with the exact command that
rebuilds it. Loading needs numpy and pandas only; the search index is built on first use.
"""

from __future__ import annotations

import json
import shlex
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import DermaLensError
from backend.files import sha256_file
from backend.retrieval.index import make_index

FORMAT = "dermalens-reference-library"
FORMAT_VERSION = 1
MANIFEST = "library.json"
EMBEDDINGS = "embeddings.npy"
INDEX_CSV = "index.csv"
THUMBNAILS = "thumbs.bin"
BUILD_DIR = ".build"
#: Columns of ``index.csv``, in order.
INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "image", "diagnosis", "label", "malignant", "lesion_id", "patient_id", "sha256", "pixels_sha256",
    "thumb_offset", "thumb_size",
)
_TEXT_COLUMNS = ("image_id", "image", "diagnosis", "lesion_id", "patient_id", "sha256", "pixels_sha256")


class ReferenceLibraryError(DermaLensError, ValueError):
    """A reference library is missing, unfinished, corrupt or cannot be written where asked."""


class LibraryModelMismatchError(ReferenceLibraryError):
    """A library was built with another model than the one asked to search it."""


# -- model identity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """Which network produced a set of embeddings.

    Attributes:
        name: Model name (the bundle card's ``name``; a checkpoint's file stem).
        version: Model version (``checkpoint`` for training checkpoints).
        kind: Where ``sha256`` comes from: ``bundle`` (the card's weights SHA-256), ``checkpoint``
            (the ``.ckpt`` file's) or ``weights`` (the network's parameters, for in-memory models).
        sha256: Hex SHA-256 identifying the weights; two identities match when these are equal.
        feature_dim: Length of the backbone feature vector (None until it is known).
    """

    name: str
    version: str
    kind: str
    sha256: str
    feature_dim: int | None = None

    def describe(self) -> str:
        """``'dermalens-default' version 1.0 (bundle weights SHA-256 d935fe038ad9...)``."""
        dim = f", {self.feature_dim}-dim features" if self.feature_dim else ""
        return f"'{self.name}' version {self.version} ({self.kind} weights SHA-256 {self.sha256[:12]}...{dim})"

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the manifest."""
        return {"name": self.name, "version": self.version, "kind": self.kind, "weights_sha256": self.sha256,
                "feature_dim": self.feature_dim}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        """Inverse of :meth:`to_dict`."""
        dim = data.get("feature_dim")
        return cls(str(data.get("name", "?")), str(data.get("version", "?")), str(data.get("kind", "?")),
                   str(data.get("weights_sha256", "")), None if dim is None else int(dim))


_IDENTITIES: weakref.WeakKeyDictionary[Any, ModelIdentity] = weakref.WeakKeyDictionary()
_IDENTITY_LOCK = threading.Lock()


def _weights_digest(net: Any) -> str:
    """SHA-256 over a network's parameter and buffer names and bytes (in-memory models have no file)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_identity(predictor: Any) -> ModelIdentity:
    """The identity of a ``Predictor``'s network, computed once per predictor.

    Bundles are identified by their card's weights SHA-256 (verified when the bundle was loaded),
    training checkpoints by the SHA-256 of the ``.ckpt`` file, anything else by a hash of the
    network's parameters.

    Args:
        predictor: A ``backend.inference.predictor.Predictor``.
    """
    with _IDENTITY_LOCK:
        cached = _IDENTITIES.get(predictor)
        if cached is not None:
            return cached
        card = predictor.card
        name, version = str(card.get("name", "model")), str(card.get("version", "?"))
        source = card.get("source")
        if card.get("weights_sha256"):
            identity = ModelIdentity(name, version, "bundle", str(card["weights_sha256"]))
        elif version == "checkpoint" and source and Path(source).is_file():

            identity = ModelIdentity(name, version, "checkpoint", sha256_file(source))
        else:
            identity = ModelIdentity(name, version, "weights", _weights_digest(predictor.net))
        _IDENTITIES[predictor] = identity
        return identity


def build_command(csv: str | None, output: str | Path, checkpoint: str | None, img_dir: str | None = None,
                  rebuild: bool = False) -> str:
    """The ``scripts.build_reference`` command line that (re)builds a library, shell-quoted.

    Args:
        csv: Label file the library is built from (``LABELS.csv`` when unknown).
        output: The library folder.
        checkpoint: The model to build it with (``MODEL`` when unknown).
        img_dir: Image folder, when the label file needs one.
        rebuild: Add ``--rebuild`` (replace a library built with another model).
    """
    parts = ["python", "-m", "scripts.build_reference", "--csv", csv or "LABELS.csv"]
    if img_dir:
        parts += ["--img_dir", str(img_dir)]
    parts += ["--output", str(output), "--checkpoint", checkpoint or "MODEL"]
    if rebuild:
        parts.append("--rebuild")
    return " ".join(shlex.quote(p) if p not in ("LABELS.csv", "MODEL") else p for p in parts)


# -- manifest --------------------------------------------------------------------------------------


def is_library(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a library manifest (complete or not)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the library folder ``path``.

    Raises:
        ReferenceLibraryError: No manifest, unreadable JSON, or not a DermaLens library.
    """
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ReferenceLibraryError(f"{path}: not a reference library (no {MANIFEST}); build one with "
                                    f"{build_command(None, path, None)}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReferenceLibraryError(f"{file}: unreadable library manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReferenceLibraryError(f"{file}: not a DermaLens reference library manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ReferenceLibraryError(f"{file}: library format version {manifest.get('format_version')!r} is not "
                                    f"supported (expected {FORMAT_VERSION}); rebuild it")
    return manifest


def manifest_command(manifest: dict[str, Any], path: str | Path, checkpoint: str | None = None,
                     rebuild: bool = False) -> str:
    """:func:`build_command` for the library at ``path``, from the source its manifest records.

    Args:
        manifest: The library's manifest.
        path: The library folder.
        checkpoint: Model to build with; default the one the library was built with.
        rebuild: Add ``--rebuild``.
    """
    source = manifest.get("source") or {}
    return build_command(source.get("csv"), path, checkpoint or source.get("checkpoint"), source.get("img_dir"),
                         rebuild)


# -- the loaded library ------------------------------------------------------------------------


class ReferenceLibrary:
    """A complete reference library loaded for search (embeddings memory-mapped, metadata in memory).

    It holds only the library's own files, never a query, so one instance can be shared by every
    user of a process (the dashboard caches it with ``st.cache_resource``).

    Args:
        path: The library folder.
        manifest: Its manifest.
        embeddings: ``(N, D)`` float32 unit vectors.
        rows: ``index.csv`` as a DataFrame (text columns as str, blank for unknown).
        thumbs: Bytes of ``thumbs.bin`` (or a memory map of it).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], embeddings: np.ndarray, rows: Any,
                 thumbs: Any) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.embeddings = embeddings
        self.rows = rows
        self._thumbs = thumbs
        self.malignant = rows["malignant"].to_numpy(dtype=np.int8) == 1
        #: Per row, the case it belongs to: its lesion id, or the row itself when it has none.
        self.case_keys = np.array([lesion or f"row:{i}" for i, lesion in enumerate(
            rows["lesion_id"].fillna("").astype(str).tolist())], dtype=object)
        self._lookups: dict[str, dict[str, np.ndarray]] = {}
        self._index: Any = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> ReferenceLibrary:
        """Load a complete library folder.

        Args:
            path: The folder ``scripts.build_reference --output`` wrote.

        Raises:
            ReferenceLibraryError: Missing, unfinished (the message gives the command that finishes
                it) or inconsistent files.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if not manifest.get("complete"):
            raise ReferenceLibraryError(
                f"{path}: the library build was interrupted and is incomplete; rerun the same command to finish it: "
                f"{manifest_command(manifest, path)}")
        embeddings, rows, thumbs = read_parts(path)
        if rows is None or len(rows) != int(manifest.get("n_rows", -1)):
            raise ReferenceLibraryError(f"{path}: the library files disagree with {MANIFEST} (expected "
                                        f"{manifest.get('n_rows')} rows); rebuild it with "
                                        f"{manifest_command(manifest, path, rebuild=True)}")
        return cls(path, manifest, embeddings, rows, thumbs)

    # -- facts ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def name(self) -> str:
        """The folder's name (what the dashboard lists)."""
        return self.path.name

    @property
    def feature_dim(self) -> int:
        """Length of the stored embeddings."""
        return int(self.embeddings.shape[1])

    @property
    def model(self) -> ModelIdentity:
        """The model the library was built with."""
        return ModelIdentity.from_dict(self.manifest.get("model") or {})

    def thumbnail(self, row: int) -> bytes:
        """JPEG bytes of row ``row``'s thumbnail (empty when the build stored none).

        Args:
            row: Row number in the library.
        """
        offset, size = int(self.rows["thumb_offset"].iat[row]), int(self.rows["thumb_size"].iat[row])
        return bytes(self._thumbs[offset : offset + size])

    # -- model check ------------------------------------------------------------------------------

    def check_model(self, identity: ModelIdentity, model_path: str | None = None) -> None:
        """Refuse to search with another model than the one the library was built with.

        Args:
            identity: :func:`model_identity` of the model about to query.
            model_path: That model's bundle folder or ``.ckpt`` (put in the rebuild command).

        Raises:
            LibraryModelMismatchError: Different weights, or a different feature dimension.
        """
        built = self.model
        same_dim = identity.feature_dim is None or identity.feature_dim == self.feature_dim
        if built.sha256 == identity.sha256 and same_dim:
            return
        raise LibraryModelMismatchError(
            f"reference library {self.path} was built with model {built.describe()}, but the loaded model is "
            f"{identity.describe()}. Embeddings of different models are not comparable, so this library cannot "
            f"be searched with it. Rebuild the library with the loaded model: "
            f"{manifest_command(self.manifest, self.path, model_path or '<the loaded model>', rebuild=True)}")

    # -- lookups ----------------------------------------------------------------------------------

    def rows_where(self, column: str, value: str | None) -> np.ndarray:
        """Row numbers whose ``column`` equals ``value`` (empty for a blank value).

        Args:
            column: ``lesion_id``, ``patient_id``, ``sha256`` or ``pixels_sha256``.
            value: The value looked up.
        """
        if value is None or str(value).strip() == "":
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            table = self._lookups.get(column)
            if table is None:
                values = self.rows[column].to_numpy(dtype=str)
                order = np.argsort(values, kind="stable")
                uniq, starts = np.unique(values[order], return_index=True)
                groups = np.split(order.astype(np.int64), starts[1:])
                table = {u: g for u, g in zip(uniq.tolist(), groups, strict=True) if u != ""}
                self._lookups[column] = table
        return table.get(str(value).strip(), np.zeros(0, dtype=np.int64))

    def index(self) -> Any:
        """The search index (:func:`backend.retrieval.index.make_index`), built on first use."""
        with self._lock:
            if self._index is None:

                self._index = make_index(self.embeddings, cache_dir=self.path,
                                         cache_key=str(self.manifest.get("build_id", "")))
            return self._index


def read_parts(path: Path) -> tuple[np.ndarray, Any, Any]:
    """The consolidated files of a library folder, or ``(empty, None, b"")`` when absent or inconsistent.

    Used by the loader (which insists on them) and by a resumed build (which reuses what is there).

    Args:
        path: The library folder.
    """
    import pandas as pd

    files = [path / EMBEDDINGS, path / INDEX_CSV, path / THUMBNAILS]
    empty = (np.zeros((0, 0), np.float32), None, b"")
    if not all(f.is_file() for f in files):
        return empty
    try:
        embeddings = np.load(files[0], mmap_mode="r", allow_pickle=False)
        rows = pd.read_csv(files[1], dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False)
        size = files[2].stat().st_size
        thumbs = np.memmap(files[2], dtype=np.uint8, mode="r") if size else b""
    except (OSError, ValueError) as err:
        raise ReferenceLibraryError(f"{path}: unreadable library files ({err})") from None
    if tuple(rows.columns) != INDEX_COLUMNS or embeddings.ndim != 2 or embeddings.dtype != np.float32:
        return empty
    ends = rows["thumb_offset"].to_numpy(np.int64) + rows["thumb_size"].to_numpy(np.int64)
    if len(rows) != embeddings.shape[0] or (len(ends) and int(ends.max()) > size):
        return empty
    return embeddings, rows, thumbs
