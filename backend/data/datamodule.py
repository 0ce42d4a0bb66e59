"""``LesionDataModule``: the lesion table, its grouped splits and the three dataloaders.

Everything fitted on data (class weights, the metadata encoder's age normalisation, the
thickness scaler in :mod:`backend.training.run`) is fitted on the training split only, so the
validation and test splits never leak into the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, WeightedRandomSampler, get_worker_info

from backend.data.config import DataConfig
from backend.data.dataset import LesionDataset, encode_targets
from backend.data.formats import load_table
from backend.data.image_paths import default_img_dir
from backend.data.metadata import MetadataEncoder
from backend.data.preprocess import SETTINGS_FILE, is_hairless_folder
from backend.data.schema import DIAGNOSES
from backend.data.splits import assign_splits, read_splits, write_splits
from backend.data.transforms import build_eval_transform, build_train_transform, preprocessing_dict
from backend.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def class_weights(diagnosis_index: np.ndarray, num_classes: int = len(DIAGNOSES)) -> np.ndarray:
    """Inverse-frequency cross-entropy weights ``N / (K * n_c)`` over the N rows and K classes present.

    Each class present weighs as much as any other in total, and the mean weight over the rows is 1.

    Args:
        diagnosis_index: Per-row class index, ``-1`` for rows without a trainable diagnosis.
        num_classes: Number of classes.

    Returns:
        ``(num_classes,)`` float32; classes absent from the split get weight 0 (they never occur).
    """
    known = diagnosis_index[diagnosis_index >= 0]
    counts = np.bincount(known, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    if present.any():
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def class_priors(diagnosis_index: np.ndarray, num_classes: int = len(DIAGNOSES)) -> np.ndarray:
    """Share of each diagnosis among the rows with one (the train split's class frequencies).

    Args:
        diagnosis_index: Per-row class index, ``-1`` for rows without a trainable diagnosis.
        num_classes: Number of classes.

    Returns:
        ``(num_classes,)`` float32 summing to 1 (all zeros when no row has a diagnosis).
    """
    counts = np.bincount(diagnosis_index[diagnosis_index >= 0], minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return (counts / total if total > 0 else counts).astype(np.float32)


def sample_weights(diagnosis_index: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-row weights of the class-balanced sampler: each class (UNK by its benign label) equally likely."""
    keys = np.where(diagnosis_index >= 0, diagnosis_index, len(DIAGNOSES) + (label > 0))
    counts = np.bincount(keys)
    return (1.0 / counts[keys]).astype(np.float64)


def seed_augmentations(dataset: Any, seed: int) -> None:
    """Seed a dataset's albumentations pipelines from ``seed``, each view (BYOL's two) its own stream.

    albumentations' ``Compose`` keeps its own random state, seeded from the OS unless told:
    without this, training images would be augmented differently on every run of the same seed.
    Each (seed, view) pair goes through ``numpy.random.SeedSequence``, so neighbouring seeds (the
    workers of one loader) and the views of one worker get independent streams.
    """
    for view, name in enumerate(("transform", "transform1", "transform2")):
        transform = getattr(dataset, name, None)
        if hasattr(transform, "set_random_seed"):
            state = np.random.SeedSequence([int(seed) % 2**64, view]).generate_state(1)[0]
            transform.set_random_seed(int(state))


def seed_worker_augmentations(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream, derived from the run's seed.

    Every forked worker would inherit the same albumentations state: worker 0's and worker 1's
    i-th images would get the same crop, flip and colour. Each worker reseeds its dataset's
    transforms (:func:`seed_augmentations`) from its torch seed (the run's seed, the epoch's base
    seed and the worker id), after Lightning's own seeding of ``random``, numpy and torch.
    """
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    seed_augmentations(info.dataset, info.seed)


def augmentation_loader_options(dataset: Any, num_workers: int) -> dict[str, Any]:
    """DataLoader options that make augmentations follow the run's seed, with or without workers.

    With workers, each seeds its own stream (:func:`seed_worker_augmentations`); without, the
    main process's transforms are seeded here, from torch's seed (``seed_everything``'s).
    """
    if num_workers > 0:
        return {"worker_init_fn": seed_worker_augmentations}
    seed_augmentations(dataset, torch.initial_seed())
    return {"worker_init_fn": None}


class LesionDataModule(L.LightningDataModule):
    """Load, split and serve a lesion table according to a :class:`DataConfig`.

    Args:
        cfg: The data config.
        table: An already loaded table to use instead of reading ``cfg.csv`` (tests, notebooks).
    """

    def __init__(self, cfg: DataConfig, table: pd.DataFrame | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._given_table = table
        self._cache_hairless = False  # set by setup(): data.img_dir is a cache made with hair removal
        self.table: pd.DataFrame | None = None
        self.splits: pd.Series | None = None
        self.metadata_encoder: MetadataEncoder | None = None
        self.class_weights: np.ndarray | None = None
        self.class_priors: np.ndarray | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the table and assign splits once (Lightning calls this on every rank and stage)."""
        if self.table is not None:
            return

        cfg = self.cfg
        folder = cfg.img_dir or (default_img_dir(cfg.csv) if cfg.csv else None)
        self._cache_hairless = folder is not None and is_hairless_folder(folder)
        if self._cache_hairless and not cfg.hair_removal:
            raise ConfigError(
                f"the images in {folder} come from a cache made with hair removal ({SETTINGS_FILE}), but "
                "data.hair_removal is false: the model would learn on hairless images and predict on hairy "
                "ones. Set data.hair_removal=true (the model then removes hair when it predicts; the cache's "
                "images are used as they are), or train on the original images")
        if self._given_table is not None:
            table = self._given_table.reset_index(drop=True)
        else:

            table = load_table(
                cfg.csv, img_dir=cfg.img_dir, format=cfg.format, metadata_csv=cfg.metadata_csv,
                skip_missing=cfg.skip_missing,
            )
        if cfg.split_csv:
            splits = read_splits(cfg.split_csv, table)
        else:
            splits = assign_splits(table, val_frac=cfg.split.val_frac, test_frac=cfg.split.test_frac,
                                   seed=cfg.split.seed)
        self.table, self.splits = table, splits.reindex(table.index)
        train = self.split_table("train")
        if train.empty:
            raise ConfigError(f"the training split of {cfg.csv} is empty (data.split fractions leave no rows)")
        train_diagnosis = encode_targets(train)["diagnosis"]
        self.class_weights = class_weights(train_diagnosis)
        self.class_priors = class_priors(train_diagnosis)
        self.metadata_encoder = MetadataEncoder.fit(train["age_approx"].to_numpy(dtype=float, na_value=np.nan))
        log.info("data: %s", ", ".join(f"{s} {int((self.splits == s).sum())}" for s in SPLITS))

    def split_table(self, split: str) -> pd.DataFrame:
        """The rows of one split (``train``, ``val`` or ``test``)."""
        if self.table is None or self.splits is None:
            raise RuntimeError("call setup() first")
        return self.table[self.splits == split].reset_index(drop=True)

    @property
    def train_table(self) -> pd.DataFrame:
        """Rows of the training split."""
        return self.split_table("train")

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has any row."""
        return self.splits is not None and bool((self.splits == split).any())

    def write_splits(self, path: str | Path) -> Path:
        """Save the split assignment next to a run (``image_id,split``)."""
        write_splits(self.table, self.splits, path)
        return Path(path)

    def dataset(self, split: str | pd.DataFrame, train: bool = False,
                replace_unreadable: bool | None = None) -> LesionDataset:
        """A dataset over a split name or an explicit table, with train or eval transforms.

        An unreadable image is replaced by the next readable row in training and left out of the
        figures in evaluation (:class:`LesionDataset`); ``replace_unreadable`` overrides that.
        """
        table = self.split_table(split) if isinstance(split, str) else split.reset_index(drop=True)
        transform = build_train_transform(self.cfg) if train else build_eval_transform(preprocessing_dict(self.cfg))
        meta = self.metadata_encoder.encode_table(table) if self.cfg.use_metadata else None
        # A hairless cache already removed the hair: not twice (the model's preprocessing still records it).
        hair = self.cfg.hair_removal and not self._cache_hairless
        replace = train if replace_unreadable is None else replace_unreadable
        return LesionDataset(table, transform, self.cfg.img_size, metadata=meta, hair_removal=hair,
                             replace_unreadable=replace)

    def _loader(
        self, dataset: LesionDataset, shuffle: bool, sampler: Any = None, drop_last: bool = False
    ) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            **augmentation_loader_options(dataset, workers),
            pin_memory=False,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (or class-balanced) training batches with augmentations."""
        dataset = self.dataset("train", train=True)
        sampler = None
        if self.cfg.balanced_sampler:
            t = dataset.targets
            weights = sample_weights(t["diagnosis"], t["label"])
            sampler = WeightedRandomSampler(weights.tolist(), num_samples=len(weights), replacement=True)
        # A lone last sample would make a batch of one, which batch norm cannot train on.
        return self._loader(dataset, shuffle=True, sampler=sampler, drop_last=len(dataset) > self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation batches with the eval transform."""
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches with the eval transform."""
        return self._loader(self.dataset("test"), shuffle=False)
