"""Unlabelled image folders for self-supervised pretraining: each item is two augmented views.

:func:`scan_image_dirs` lists every image under one or more folders (recursively, hidden files
skipped, sorted so the list is the same on every machine and DDP rank), optionally minus an
exclusion list and cut to a seeded random subset. :class:`UnlabelledImageDataset` decodes each
image once and returns it through two different transforms (BYOL's asymmetric views).

Like :class:`backend.data.dataset.LesionDataset`, an image that cannot be decoded mid-epoch is
reported once (a warning naming the file and the reason) and replaced by the next readable one,
so a corrupt file in a folder of thousands never kills an hours-long run.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from backend.data.images import load_image
from backend.data.preprocess import find_images
from backend.data.schema import IMAGE_EXTENSIONS
from backend.data.transforms import build_byol_transforms, preprocessing_dict, shades_of_gray
from backend.errors import ConfigError, DataFormatError, ImageLoadError

log = logging.getLogger(__name__)

#: How many following images to try before giving up when images fail to decode.
MAX_REPLACEMENTS = 16


def read_exclude_list(path: str | Path) -> set[str]:
    """File stems named by an exclusion file: one name per line, or a CSV with an ``image`` column.

    Raises:
        DataFormatError: The file is missing or unreadable, or a CSV has no ``image`` column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"cannot read the exclusion list (data.exclude_list): {err}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise DataFormatError(path, f"an exclusion CSV needs an 'image' column (columns: {reader.fieldnames})",
                                  line=1, field="image")
        names = [row.get("image") or "" for row in reader]
    else:
        names = text.splitlines()
    return {Path(name.strip()).stem for name in names if name.strip()}


def scan_image_dirs(
    dirs: Sequence[str | Path], exclude: set[str] | None = None, max_images: int = 0, seed: int = 0
) -> list[Path]:
    """Every supported image under ``dirs`` (recursive), sorted, minus ``exclude``, optionally subsampled.

    Args:
        dirs: Folders to scan.
        exclude: File stems to leave out.
        max_images: Keep a seeded random subset of this many (0 = all); the kept files stay sorted.
        seed: Seed of that subset.

    Raises:
        ConfigError: A folder does not exist, or no image is left.
    """
    found: set[Path] = set()
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"image folder not found: {folder} (data.dirs / --data_dirs)")
        found.update(path for path, _ in find_images(folder))
    paths = sorted(p for p in found if not exclude or p.stem not in exclude)
    if exclude:
        left_out = len(found) - len(paths)
        if left_out == 0:
            log.warning("data.exclude_list names %d images and none of them is under %s: check the list "
                        "(nothing was left out)", len(exclude), ", ".join(str(d) for d in dirs))
        else:
            log.info("data.exclude_list: left out %d of the %d images it names", left_out, len(exclude))
    if not paths:
        excluded = f" after excluding {len(found)} listed in data.exclude_list" if found else ""
        raise ConfigError(
            f"no images found under {', '.join(str(d) for d in dirs)}{excluded} "
            f"(looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    if 0 < max_images < len(paths):
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False))
        paths = [paths[i] for i in keep]
    return paths


class UnlabelledImageDataset(Dataset):
    """Images without labels; item ``i`` is ``{"view1", "view2", "index"}``.

    Args:
        paths: Image files.
        transform1: Albumentations pipeline of the first view (called as ``transform(image=...)``).
        transform2: Pipeline of the second view.
        img_size: Network input side; large images are decoded at reduced size (never below it).
        color_constancy_power: Apply Shades-of-Gray colour constancy with this power once per image,
            before both views (None = not here; the transforms may do it themselves).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform1: Callable[..., dict[str, Any]],
        transform2: Callable[..., dict[str, Any]],
        img_size: int,
        color_constancy_power: float | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.transform1 = transform1
        self.transform2 = transform2
        self.img_size = img_size
        self.color_constancy_power = color_constancy_power
        self._reported: set[str] = set()

    @classmethod
    def from_config(cls, data_cfg: Any, seed: int = 0, paths: Sequence[str | Path] | None = None
                    ) -> UnlabelledImageDataset:
        """Scan ``data_cfg.dirs`` (or take ``paths``) and pair the images with BYOL's two views.

        Colour constancy, deterministic and the slowest step of the pipeline, runs once per image
        here instead of once per view inside the transforms (same pixels, half the cost).

        Args:
            data_cfg: A :class:`backend.training.byol_config.UnlabelledDataConfig`.
            seed: Seed of the ``max_images`` subset.
            paths: The images to use instead of scanning (a resumed run's own ``images.txt``).
        """
        if paths is None:
            exclude = read_exclude_list(data_cfg.exclude_list) if data_cfg.exclude_list else None
            paths = scan_image_dirs(data_cfg.dirs, exclude=exclude, max_images=data_cfg.max_images, seed=seed)
        data = data_cfg.as_data_config()
        pre = preprocessing_dict(data)
        power = float(pre["color_constancy_power"]) if pre["color_constancy"] else None
        data.color_constancy = False
        view1, view2 = build_byol_transforms(data)
        return cls(paths, view1, view2, img_size=data_cfg.img_size, color_constancy_power=power)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:

        for offset in range(MAX_REPLACEMENTS):
            row = (idx + offset) % len(self)
            try:
                image = load_image(self.paths[row], target_size=self.img_size)
            except ImageLoadError as err:
                if err.path not in self._reported:
                    self._reported.add(err.path)
                    warnings.warn(f"skipping unreadable image {err}", stacklevel=2)
                continue
            if self.color_constancy_power is not None:

                image = shades_of_gray(image, self.color_constancy_power)
            return {
                "view1": self.transform1(image=image)["image"],
                "view2": self.transform2(image=image)["image"],
                "index": torch.tensor(row),
            }
        raise ImageLoadError(self.paths[idx], f"this and the next {MAX_REPLACEMENTS - 1} images are unreadable")
