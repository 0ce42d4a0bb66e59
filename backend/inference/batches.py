"""The batched input path: decoding, metadata encoding, quality flags and preprocessing in DataLoader workers.

:meth:`Predictor.iter_outputs <backend.inference.predictor.Predictor.iter_outputs>` wraps
:class:`InputDataset` in a ``torch.utils.data.DataLoader`` with :func:`collate_inputs`, so every
batch path (``predict``, ``raw_outputs``, ``scripts/predict.py``, ``backend.evaluation``) decodes
and preprocesses the same way, in the main process (``num_workers=0``) or in worker processes.

An input that cannot be used (an unreadable image, a metadata row outside the vocabulary) becomes an
:class:`InputFailure` naming it, never an exception out of a worker, so one bad file does not
stop a batch; the caller decides whether to skip it (evaluation, the CLI) or raise it (``predict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from backend.data.metadata import MetadataEncoder
from backend.errors import ConfigError, DermaLensError, ImageLoadError
from backend.inference.inputs import (
    PreparedInput,
    Preprocessor,
    check_metadata_rows,
    encode_metadata_row,
    prepare_input,
)
from backend.inference.quality import QualityConfig, QualityFlag
from backend.inference.records import Prediction, RawOutputs


@dataclass(frozen=True)
class InputFailure:
    """An input that could not be used.

    Attributes:
        index: Its position in the input sequence.
        message: What is wrong, naming the image (the error's message).
        path: The image, when it could not be decoded (an ``ImageLoadError``); None for bad metadata or arrays.
        reason: The decoding error's reason (with ``path``).
    """

    index: int
    message: str
    path: str | None = None
    reason: str | None = None

    @classmethod
    def from_error(cls, index: int, err: DermaLensError) -> InputFailure:
        """The failure of input ``index`` from the error it raised (picklable, unlike the error itself)."""
        if isinstance(err, ImageLoadError):
            return cls(index, str(err), err.path, err.reason)
        return cls(index, str(err))

    def error(self) -> DermaLensError:
        """The error to raise for it (same type and message as the original)."""
        if self.path is not None:
            return ImageLoadError(self.path, self.reason or "")
        return ConfigError(self.message)


@dataclass
class InputItem:
    """One usable input, ready for the network (what :class:`InputDataset` returns for it)."""

    index: int
    name: str
    x: torch.Tensor
    meta: np.ndarray | None
    metadata_used: bool
    flags: list[QualityFlag] | None
    prepared: PreparedInput | None


class InputDataset(Dataset):
    """Inputs of a batch prediction, decoded, encoded, quality-checked and preprocessed per item.

    Args:
        images: Anything ``prepare_input`` accepts, one per item; a lazy sequence (read by index)
            is read in the workers.
        metadata: One patient-metadata dict (or None) per image, or None.
        names: What to call each image instead of the name it carries, or None.
        target_size: Decode large files at reduced size, not below this (the network input side).
        preprocessor: The model's eval preprocessing.
        encoder: The model's metadata encoder; None feeds the network no metadata (image-only
            models, or a fusion model's learned "no metadata" path).
        quality: Compute the image-statistics quality flags with these thresholds; None skips them.
        keep_inputs: Return each :class:`PreparedInput` (to explain or hash it later without decoding again).
    """

    def __init__(self, images: Sequence[Any], metadata: Sequence[dict[str, Any] | None] | None,
                 names: Sequence[str] | None, target_size: int, preprocessor: Preprocessor,
                 encoder: MetadataEncoder | None, quality: QualityConfig | None, keep_inputs: bool = False) -> None:
        check_metadata_rows(metadata, len(images))
        if names is not None and len(names) != len(images):
            raise ConfigError(f"{len(names)} names for {len(images)} images")
        self.images, self.metadata, self.names = images, metadata, names
        self.target_size, self.preprocessor, self.encoder = target_size, preprocessor, encoder
        self.quality, self.keep_inputs = quality, keep_inputs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> InputItem | InputFailure:
        try:
            meta, used = None, False
            if self.encoder is not None:  # before decoding: a bad row costs no decode
                meta, used = encode_metadata_row(self.encoder, None if self.metadata is None else self.metadata[index])
            prepared = prepare_input(self.images[index], index, self.target_size,
                                     None if self.names is None else self.names[index])
            x = self.preprocessor.of(prepared)
            flags = None if self.quality is None else prepared.flags(self.quality)
        except (ImageLoadError, ConfigError) as err:
            return InputFailure.from_error(index, err)
        return InputItem(index, prepared.name, x, meta, used, flags, prepared if self.keep_inputs else None)


@dataclass
class InputBatch:
    """A collated batch of :class:`InputDataset` items.

    Attributes:
        size: Inputs covered (usable or not).
        items: The usable ones, in input order.
        failures: The unusable ones.
        x: ``(B, 3, S, S)`` network inputs of ``items`` (None when there are none).
        meta: ``(B, dim)`` encoded metadata, or None (no encoder).
    """

    size: int
    items: list[InputItem]
    failures: list[InputFailure]
    x: torch.Tensor | None
    meta: np.ndarray | None


def collate_inputs(samples: list[InputItem | InputFailure]) -> InputBatch:
    """The DataLoader's ``collate_fn``: stack the usable items' tensors, keep the failures apart."""
    items = [s for s in samples if isinstance(s, InputItem)]
    failures = [s for s in samples if isinstance(s, InputFailure)]
    x = torch.stack([item.x for item in items]) if items else None
    meta = np.stack([item.meta for item in items]) if items and items[0].meta is not None else None
    return InputBatch(len(samples), items, failures, x, meta)


@dataclass
class OutputBatch:
    """What :meth:`Predictor.iter_outputs` yields for each batch of inputs.

    Attributes:
        size: Inputs this batch covered, usable or not (for progress).
        indices: Positions in the input sequence of the usable inputs, in order.
        names: Their names.
        raw: Their network outputs (row ``i`` is input ``indices[i]``).
        predictions: Their :class:`Prediction` records (empty when not asked for).
        failures: The inputs that could not be used.
        inputs: The usable inputs as :class:`PreparedInput` (decoded and preprocessed), or None
            unless asked for.
        metadata_used: Per usable input, whether patient metadata was given and fed to the model.
    """

    size: int
    indices: list[int]
    names: list[str]
    raw: RawOutputs
    predictions: list[Prediction]
    failures: list[InputFailure]
    inputs: list[PreparedInput] | None
    metadata_used: np.ndarray
