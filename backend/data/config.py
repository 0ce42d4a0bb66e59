"""Data section of the experiment config: where labels and images are, and how to batch them."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from backend.errors import ConfigError


@dataclass
class SplitConfig:
    """Lesion- and patient-grouped, diagnosis-stratified split fractions.

    Attributes:
        val_frac: Fraction of rows for validation.
        test_frac: Fraction of rows for the held-out test split.
        seed: Seed of the deterministic grouping shuffle.
    """

    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 42

    def validate(self) -> None:
        """Reject fractions that leave no training data, and a seed the shuffle cannot take."""
        for name in ("val_frac", "test_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"data.split.{name} must be in [0, 1), got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ConfigError(f"data.split.seed must be a whole number >= 0, got {self.seed!r}")
        if self.val_frac + self.test_frac >= 1.0:
            raise ConfigError(
                f"data.split.val_frac + data.split.test_frac must be < 1, got {self.val_frac + self.test_frac}"
            )


@dataclass
class DataConfig:
    """Where the labelled images are and how they become batches.

    Attributes:
        csv: Label table (generic CSV, ISIC 2019 ground truth, HAM10000 metadata) or an isic-cli
            download folder.
        img_dir: Folder holding the images named in ``csv`` (relative paths resolve against it);
            None means the ``images/`` folder beside the CSV if there is one, else the CSV's folder.
        format: ``auto`` detects the format from the header; or force one by name.
        metadata_csv: Extra metadata CSV (the ISIC 2019 metadata file beside its ground truth).
        split_csv: A split assignment CSV (``image_id,split``) to reuse instead of computing one.
        skip_missing: Turn rows whose image file is missing into one warning with a count.
        img_size: Square side, in pixels, of the network input; the one input-size setting (the
            network, and the stage Grad-CAM watches, are built for it).
        mean, std: Per-channel input normalisation of ``[0, 1]`` RGB. None (default): the
            backbone's own (``Backbone.input_mean``/``input_std``: ImageNet's, or 0.5/0.5 for
            TensorFlow-ported weights), filled in when training starts and saved with the run.
        batch_size: Images per batch (per device).
        num_workers: DataLoader worker processes.
        balanced_sampler: Sample training rows inversely to their class frequency.
        use_metadata: Feed age/sex/site tensors to the model: the one metadata switch (the model
            gets a metadata branch exactly when it is on; the encoder sets the vector's width).
        hair_removal: Apply DullRazor-style hair removal when decoding.
        color_constancy: Shades-of-Gray colour constancy in both training and inference.
        augment: Training augmentation strength preset: ``light``, ``default`` or ``strong``.
        split: Split fractions and seed.
    """

    csv: str = "../shared/data/labels.csv"
    img_dir: str | None = None
    format: str = "auto"
    metadata_csv: str | None = None
    split_csv: str | None = None
    skip_missing: bool = False
    img_size: int = 224
    mean: list[float] | None = None
    std: list[float] | None = None
    batch_size: int = 32
    num_workers: int = 2
    balanced_sampler: bool = False
    use_metadata: bool = True
    hair_removal: bool = False
    color_constancy: bool = True
    augment: str = "default"
    split: SplitConfig = field(default_factory=SplitConfig)

    def validate(self) -> None:
        """Reject impossible values with the key that holds them."""
        if self.img_size < 16:
            raise ConfigError(f"data.img_size must be >= 16, got {self.img_size}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ConfigError(f"data.{name} must be three numbers (std > 0), got {value}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.augment not in ("light", "default", "strong"):
            raise ConfigError(f"data.augment must be light, default or strong, got {self.augment!r}")
