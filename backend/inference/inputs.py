"""Inference inputs: any accepted image decoded once into a :class:`PreparedInput`, metadata encoded.

Every image the predictor reads goes through :func:`prepare_input`, the one place inference decodes:
an RGB uint8 array, a file path, ``(name, bytes)``, ``(name, array)``, raw bytes, a file-like upload
with ``.name`` (Streamlit's ``UploadedFile``) or a :class:`PreparedInput`, which passes through.
A prepared input keeps what later steps derive from its pixels (the quality flags, the network
input of a preprocessing), so predicting, explaining and searching similar cases on one upload
decode it once and preprocess it once::

    prepared = prepare_input(("lesion.jpg", data))          # decoded here, and only here
    [result] = predictor.predict(prepared)                  # preprocessed and quality-checked once
    heatmap = predictor.explain(prepared, target="MEL")     # reuses the network input

:class:`Preprocessor` is a model's eval preprocessing of one decoded image (hair removal when the
model was trained with it, then ``backend.data.transforms.build_eval_transform``); it is picklable,
so DataLoader worker processes run it (``backend.inference.batches``). Patient metadata is encoded
per row by :func:`encode_metadata_row` exactly as training encodes table rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any

import numpy as np
import torch

from backend.data.hair import remove_hair
from backend.data.images import decode_image_bytes, load_image
from backend.data.metadata import MetadataEncoder
from backend.data.preprocess import in_hairless_cache
from backend.data.transforms import build_eval_transform
from backend.errors import ConfigError
from backend.inference.quality import QualityConfig, QualityFlag, file_flags, image_flags

#: Metadata keys accepted per image, mapped to the lesion-table names.
METADATA_KEYS: dict[str, str] = {
    "age_approx": "age_approx", "age": "age_approx",
    "sex": "sex",
    "anatom_site_general": "anatom_site_general", "site": "anatom_site_general",
    "anatom_site": "anatom_site_general",
}


@dataclass(eq=False)
class PreparedInput:
    """One image decoded once, with what later steps derive from its pixels kept beside it.

    Attributes:
        name: What results and errors call it (its path, the upload's file name, or ``image_<i>``).
        image: ``(H, W, 3)`` uint8 RGB pixels as decoded; treat them as read-only (derived values are cached).
        data: The encoded file content it was decoded from, or None (arrays, paths).
        path: The file it was decoded from, or None (uploads, arrays); read again only for the file check.
    """

    name: str
    image: np.ndarray
    data: bytes | None = None
    path: str | None = None
    _cache: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    def getvalue(self) -> bytes:
        """The encoded bytes (empty when made from pixels), as a file-like upload gives them for hashing."""
        return b"" if self.data is None else self.data

    def derived(self, key: Hashable, make: Callable[[np.ndarray], Any]) -> Any:
        """``make(image)``, computed on first use and kept under ``key``."""
        if key not in self._cache:
            self._cache[key] = make(self.image)
        return self._cache[key]

    def flags(self, cfg: QualityConfig) -> list[QualityFlag]:
        """Quality flags of the file and the pixels under ``cfg`` (``backend.inference.quality``), computed once."""
        damaged = self.derived("file_flags", lambda _: file_flags(self._encoded()))
        return [*damaged, *self.derived(("flags", astuple(cfg)), lambda image: image_flags(image, cfg))]

    def _encoded(self) -> bytes | None:
        """The encoded bytes, from memory or read again from the file (None when neither can be had)."""
        if self.data is not None or self.path is None:
            return self.data
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except OSError:  # gone since it was decoded: nothing to check
            return None

    def renamed(self, name: str) -> PreparedInput:
        """The same pixels (and everything derived from them) under another name."""
        if name == self.name:
            return self
        other = PreparedInput(name, self.image, self.data, self.path)
        other._cache = self._cache
        return other


def is_single_input(item: Any) -> bool:
    """Whether ``item`` is one input rather than a sequence of them (a tuple of two paths is two images)."""
    return isinstance(item, (PreparedInput, np.ndarray, str, os.PathLike, bytes)) or hasattr(item, "read") or (
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
        and isinstance(item[1], (bytes, bytearray, memoryview, np.ndarray))
    )


def prepare_input(item: Any, index: int = 0, target_size: int | None = None, name: str | None = None
                  ) -> PreparedInput:
    """Decode one accepted input (see the module docstring) into a :class:`PreparedInput`.

    Args:
        item: The input; a :class:`PreparedInput` is returned as it is (renamed when ``name`` is given).
        index: Its position in a batch: arrays are called ``image_<index>``, bare bytes ``upload_<index>``.
        target_size: Decode large files at reduced size, never below this on the short side (the
            network input side); arrays keep their size. None decodes at full size.
        name: What to call the image instead of the name it carries.

    Raises:
        ImageLoadError: The image cannot be decoded (the message names it and the reason).
        ConfigError: An array that is not HxWx3 uint8, or an unsupported input type.
    """
    if isinstance(item, PreparedInput):
        return item if name is None else item.renamed(name)
    data, path = None, None
    if isinstance(item, np.ndarray):
        label, image = f"image_{index}", item
    elif isinstance(item, (str, os.PathLike)):
        label, image, path = str(item), load_image(item, target_size=target_size), os.fspath(item)
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        label, payload = item
        if isinstance(payload, np.ndarray):
            image = payload
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            data = bytes(payload)
            image = decode_image_bytes(data, label, target_size=target_size)
        else:
            raise ConfigError(f"{label}: expected bytes or an RGB array, got {type(payload).__name__}")
    elif isinstance(item, (bytes, bytearray, memoryview)):
        label, data = f"upload_{index}", bytes(item)
        image = decode_image_bytes(data, label, target_size=target_size)
    elif hasattr(item, "read"):
        label = str(getattr(item, "name", f"upload_{index}"))
        data = bytes(item.getvalue() if hasattr(item, "getvalue") else item.read())
        image = decode_image_bytes(data, label, target_size=target_size)
    else:
        raise ConfigError(f"cannot predict on a {type(item).__name__}; pass an RGB uint8 array, a path or "
                          "(name, bytes)")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ConfigError(f"{label}: expected an HxWx3 uint8 RGB image, got shape {image.shape} {image.dtype}")
    return PreparedInput(label if name is None else name, image, data, path)


class Preprocessor:
    """A model's eval preprocessing of one decoded image: hair removal (when trained with it), then the eval transform.

    Args:
        preprocessing: The checked eval-transform description stored with the model.
    """

    def __init__(self, preprocessing: dict[str, Any]) -> None:
        self.preprocessing = dict(preprocessing)
        self.transform = build_eval_transform(self.preprocessing)
        self.hair_removal = bool(self.preprocessing["hair_removal"])
        #: Cache key of this preprocessing's output in a :class:`PreparedInput`.
        self.key = ("network_input", repr(sorted(self.preprocessing.items())))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``(3, S, S)`` float32 network input of an ``(H, W, 3)`` uint8 image."""
        if self.hair_removal:
            image = remove_hair(image)
        return self.transform(image=np.ascontiguousarray(image))["image"]

    def of(self, prepared: PreparedInput) -> torch.Tensor:
        """The network input of a prepared image, computed once per preprocessing.

        An image read from a cache made with hair removal (``scripts.preprocess --hair-removal``,
        what such a model was trained on) has no hair left to remove: it is not de-haired twice.
        """
        if self.hair_removal and prepared.path is not None and in_hairless_cache(prepared.path):
            return prepared.derived((*self.key, "hairless cache"), self.transform_only)
        return prepared.derived(self.key, self)

    def transform_only(self, image: np.ndarray) -> torch.Tensor:
        """The eval transform alone, without hair removal."""
        return self.transform(image=np.ascontiguousarray(image))["image"]


def _missing(value: Any) -> bool:
    """None, NaN, pandas NA or a blank/"unknown" string."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "unknown", "nan", "na")
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def encode_metadata_row(encoder: MetadataEncoder, entry: dict[str, Any] | None) -> tuple[np.ndarray, bool]:
    """One image's encoded metadata and whether any field was given.

    A row without metadata (None, or every field blank) is encoded as "age, sex and site unknown",
    exactly as training encodes such rows, so a fusion model sees the same input for it at
    inference as in training and evaluation.

    Raises:
        ConfigError: Unknown keys or values outside the encoder's vocabulary.
    """
    fields: dict[str, Any] = {"age_approx": None, "sex": None, "anatom_site_general": None}
    for key, value in (entry or {}).items():
        if key not in METADATA_KEYS:
            raise ConfigError(f"unknown metadata key {key!r}; expected age_approx, sex, anatom_site_general")
        fields[METADATA_KEYS[key]] = value
    used = any(not _missing(v) for v in fields.values())
    return encoder.encode(fields["age_approx"], fields["sex"], fields["anatom_site_general"]), used


def check_metadata_rows(metadata: Any, n: int) -> None:
    """Refuse metadata that is not one dict (or None) per image, naming what was given instead.

    Raises:
        ConfigError: A single dict for a batch, a non-sequence, another length, or a row that is
            neither a dict nor None.
    """
    if metadata is None:
        return
    if isinstance(metadata, (Mapping, str, bytes)) or not isinstance(metadata, Sequence):
        raise ConfigError(f"metadata must be a list with one dict (or None) per image, got a "
                          f"{type(metadata).__name__}; for one image in a list pass [metadata]")
    if len(metadata) != n:
        raise ConfigError(f"{len(metadata)} metadata rows for {n} images")
    for i, row in enumerate(metadata):
        if row is not None and not isinstance(row, Mapping):
            raise ConfigError(f"metadata row {i} must be a dict or None, got {type(row).__name__} {row!r}")


def encode_metadata(encoder: MetadataEncoder | None, metadata: Sequence[dict[str, Any] | None] | None, n: int
                    ) -> tuple[np.ndarray | None, np.ndarray]:
    """Encoded metadata ``(n, dim)`` (None without an encoder: image-only models) and the per-row "given" mask.

    Raises:
        ConfigError: Metadata that is not one dict (or None) per image, unknown keys or values
            outside the vocabulary.
    """
    used = np.zeros(n, dtype=bool)
    check_metadata_rows(metadata, n)
    if encoder is None:
        return None, used
    rows = np.zeros((n, encoder.dim), dtype=np.float32)
    for i, entry in enumerate(metadata if metadata is not None else [None] * n):
        rows[i], used[i] = encode_metadata_row(encoder, entry)
    return rows, used
