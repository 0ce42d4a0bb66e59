"""``LesionDataset``: rows of the lesion table -> dicts of tensors the training module reads.

Each item is ``{"image", "diagnosis", "label", "thickness_lo", "thickness_hi", "index"}`` plus
``"meta"`` when metadata is used. Unknown targets are encoded so the losses can ignore them:
``diagnosis = -1`` (UNK or missing), ``label = -1``, thickness bounds NaN.

A file that cannot be decoded mid-epoch must not kill a run that has been going for hours: it
is reported once (a warning naming the file and the reason). In training it is replaced by the
next readable row, so batch shapes stay fixed and the epoch completes. In evaluation
(``replace_unreadable=False``) a neighbour would be scored twice under its own label and the
unreadable row's lesion not at all, changing the figures that choose the checkpoint: the row is
left out of every loss and metric instead (a black image with all targets unknown).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from backend.data.hair import remove_hair
from backend.data.images import load_image
from backend.data.schema import DIAGNOSES
from backend.errors import ImageLoadError

log = logging.getLogger(__name__)

#: How many following rows to try before giving up when images fail to decode.
MAX_REPLACEMENTS = 16


def encode_targets(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Vectorised targets for a table: diagnosis index (-1 unknown), label (-1 unknown), thickness bounds."""
    index = {name: i for i, name in enumerate(DIAGNOSES)}
    diagnosis = np.array([index.get(d, -1) if isinstance(d, str) else -1 for d in table["diagnosis"]], dtype=np.int64)
    label = pd.to_numeric(table["label"], errors="coerce").fillna(-1).to_numpy(dtype=np.float32)
    return {
        "diagnosis": diagnosis,
        "label": label,
        "thickness_lo": table["thickness_lo_mm"].to_numpy(dtype=np.float32, na_value=np.nan),
        "thickness_hi": table["thickness_hi_mm"].to_numpy(dtype=np.float32, na_value=np.nan),
    }


class LesionDataset(Dataset):
    """Images and targets of a lesion table.

    Args:
        table: Rows in :data:`backend.data.schema.TABLE_COLUMNS` layout.
        transform: Albumentations pipeline ending in ``ToTensorV2`` (called as ``transform(image=...)``).
        img_size: Network input side; large images are decoded at reduced size (never below it).
        metadata: ``(N, meta_dim)`` encoded metadata, or None for image-only models.
        hair_removal: Apply DullRazor hair removal after decoding.
        replace_unreadable: Replace an undecodable row by the next readable one (training); when
            False, keep the row but leave it out of every loss and metric (evaluation).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        transform: Callable[..., dict[str, Any]],
        img_size: int,
        metadata: np.ndarray | None = None,
        hair_removal: bool = False,
        replace_unreadable: bool = True,
    ) -> None:
        self.paths = table["image"].astype(str).tolist()
        self.targets = encode_targets(table)
        self.transform = transform
        self.img_size = img_size
        self.metadata = None if metadata is None else np.asarray(metadata, dtype=np.float32)
        if self.metadata is not None and len(self.metadata) != len(self.paths):
            raise ValueError(f"metadata has {len(self.metadata)} rows for {len(self.paths)} images")
        self.hair_removal = hair_removal
        self.replace_unreadable = replace_unreadable
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, idx: int) -> np.ndarray:
        """Decode row ``idx`` (reduced size when large, hair removed when asked)."""
        image = load_image(self.paths[idx], target_size=self.img_size)
        if self.hair_removal:

            image = remove_hair(image)
        return image

    def _report(self, err: ImageLoadError, action: str) -> None:
        if err.path not in self._reported:
            self._reported.add(err.path)
            warnings.warn(f"unreadable image {err}; {action}", stacklevel=3)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not self.replace_unreadable:
            try:
                return self._item(idx, self.load(idx))
            except ImageLoadError as err:
                self._report(err, "left out of this split's losses and metrics")
                return self._unscored(idx)
        for offset in range(MAX_REPLACEMENTS):
            row = (idx + offset) % len(self)
            try:
                image = self.load(row)
            except ImageLoadError as err:
                self._report(err, "skipped, the next readable row takes its place")
                continue
            return self._item(row, image)
        raise ImageLoadError(self.paths[idx], f"this and the next {MAX_REPLACEMENTS - 1} images are unreadable")

    def _unscored(self, row: int) -> dict[str, torch.Tensor]:
        """Row ``row`` as a black image with every target unknown: no loss or metric counts it."""
        item = self._item(row, np.zeros((self.img_size, self.img_size, 3), dtype=np.uint8))
        item["diagnosis"] = torch.tensor(-1, dtype=torch.int64)
        item["label"] = torch.tensor(-1.0, dtype=torch.float32)
        item["thickness_lo"] = torch.tensor(float("nan"), dtype=torch.float32)
        item["thickness_hi"] = torch.tensor(float("nan"), dtype=torch.float32)
        return item

    def _item(self, row: int, image: np.ndarray) -> dict[str, torch.Tensor]:
        item = {
            "image": self.transform(image=image)["image"],
            "diagnosis": torch.tensor(self.targets["diagnosis"][row]),
            "label": torch.tensor(self.targets["label"][row]),
            "thickness_lo": torch.tensor(self.targets["thickness_lo"][row]),
            "thickness_hi": torch.tensor(self.targets["thickness_hi"][row]),
            "index": torch.tensor(row),
        }
        if self.metadata is not None:
            item["meta"] = torch.from_numpy(self.metadata[row])
        return item
