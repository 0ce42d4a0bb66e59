"""BYOL pretraining config: unlabelled data + backbone/heads + optimisation + trainer, as one typed tree.

Loaded like every DermaLens config (:func:`backend.config.load_config`): dataclass defaults, then
``cfgs/byol/*.yaml``, then ``key=value`` overrides; unknown keys are rejected. The model section
*is* a :class:`~backend.models.config.ModelConfig` (plus the projector and predictor sizes), so
``cfgs/model/*.yaml`` files layer onto it unchanged and the backbone is built exactly as the
supervised model builds it. The resolved tree is saved as ``config.yaml`` in every run folder and
embedded in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from backend.config import DeprecatedKey, from_dict, removed, renamed
from backend.data.config import DataConfig
from backend.errors import ConfigError
from backend.models.config import DEPRECATED_MODEL_KEYS, ModelConfig
from backend.training.config import TrainerConfig

OPTIMIZERS = ("adamw", "sgd")
NONFINITE_ACTIONS = ("stop", "raise", "skip")


@dataclass
class UnlabelledDataConfig:
    """Folders of unlabelled images and how they become pairs of views.

    Attributes:
        dirs: Folders scanned recursively for images (``backend.data.schema.IMAGE_EXTENSIONS``).
        img_size: Square side of both views, in pixels.
        batch_size: Images per batch (per device); each gives two views.
        num_workers: DataLoader worker processes.
        color_constancy: Shades-of-Gray colour constancy first (keep it as the supervised run will).
        max_images: Use a seeded random subset of this many images (0 = all).
        exclude_list: File naming images to leave out (one name per line, or a CSV with an ``image``
            column), matched by file stem: e.g. the validation and test images of a labelled set.
        mean, std: Per-channel input normalisation; None (default): the backbone's own, set when
            pretraining starts (a TensorFlow-ported MobileNetV2 expects ``[-1, 1]``, not ImageNet's).
    """

    dirs: list[str] = field(default_factory=lambda: ["../shared/data/images"])
    img_size: int = 224
    batch_size: int = 64
    num_workers: int = 2
    color_constancy: bool = True
    max_images: int = 0
    exclude_list: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def validate(self) -> None:
        """Reject impossible values with the key that holds them."""
        if not self.dirs:
            raise ConfigError("data.dirs must name at least one image folder")
        if self.img_size < 16:
            raise ConfigError(f"data.img_size must be >= 16, got {self.img_size}")
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2 (BatchNorm needs a batch), got {self.batch_size}")
        if self.num_workers < 0 or self.max_images < 0:
            raise ConfigError("data.num_workers and data.max_images must be >= 0")

    def as_data_config(self) -> DataConfig:
        """The supervised :class:`DataConfig` with the same image size and colour handling.

        The transforms (``build_byol_transforms``) and the exported preprocessing description are
        built from it; a fine-tune from the export with other preprocessing is warned about
        (``backend.training.run.start_preprocessing_differences``).
        """
        return DataConfig(img_size=self.img_size, batch_size=self.batch_size, num_workers=self.num_workers,
                          color_constancy=self.color_constancy, mean=self.mean, std=self.std)


@dataclass
class ByolModelConfig(ModelConfig):
    """The supervised model section plus BYOL's heads (the metadata and fusion fields are unused).

    The backbone is built for ``data.img_size`` (there is no model-side input size).

    Attributes:
        proj_hidden_dim: Hidden width of the projector MLP (4096 in the paper; smaller for CPUs).
        proj_dim: Output width of projector and predictor.
        pred_hidden_dim: Hidden width of the predictor MLP.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    pred_hidden_dim: int = 2048

    def validate(self) -> None:
        """The checks of :class:`ModelConfig` plus positive head widths."""
        super().validate()
        for name in ("proj_hidden_dim", "proj_dim", "pred_hidden_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")

    def backbone_config(self) -> ModelConfig:
        """This section as a plain :class:`ModelConfig` (what the supervised model is built from)."""
        fields = {k: getattr(self, k) for k in ModelConfig.__dataclass_fields__}
        return ModelConfig(**fields)


@dataclass
class ByolOptimConfig:
    """Optimiser, LR schedule and the target network's EMA momentum schedule.

    Attributes:
        optimizer: ``adamw`` or ``sgd`` (with Nesterov momentum ``sgd_momentum``).
        lr: Peak learning rate (after warm-up), for the whole online network.
        weight_decay: Decay of multi-dimensional weights; never applied to GeM ``p``, norms,
            biases or the backbone's ``no_weight_decay_params()``.
        warmup_epochs: Linear LR warm-up, in epochs (fractions allowed).
        min_lr_ratio: Final LR as a fraction of the peak (cosine decay).
        betas: AdamW betas.
        sgd_momentum: SGD momentum.
        base_momentum: EMA momentum of the target at step 0.
        final_momentum: EMA momentum at the last step (cosine increase from ``base_momentum``).
    """

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    sgd_momentum: float = 0.9
    base_momentum: float = 0.996
    final_momentum: float = 1.0

    def validate(self) -> None:
        """Reject unknown optimisers and impossible rates."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ConfigError("optim.lr must be > 0, optim.weight_decay and optim.warmup_epochs >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.base_momentum <= self.final_momentum <= 1.0:
            raise ConfigError(
                f"optim momentum needs 0 <= base_momentum <= final_momentum <= 1, got "
                f"{self.base_momentum} and {self.final_momentum}"
            )


@dataclass
class ByolTrainerConfig(TrainerConfig):
    """The shared :class:`~backend.training.config.TrainerConfig` with BYOL's defaults.

    Same keys as the supervised trainer section (``max_epochs``, ``precision``, ``devices``...);
    BYOL runs longer, does not clip gradients and saves ``last.ckpt`` every 200 steps by default.
    """

    max_epochs: int = 100
    gradient_clip_val: float = 0.0
    checkpoint_every_n_steps: int = 200


@dataclass
class MonitorConfig:
    """The :class:`backend.training.monitor.GradWeightMonitor` callback.

    Attributes:
        enabled: Add the callback.
        log_every_n_steps: Log gradient and weight norms every this many steps (0 = the trainer's interval).
        histogram_every_n_steps: TensorBoard histograms of weights and gradients (0 = never).
        on_nonfinite: On a NaN/inf loss or gradient: ``stop`` (dump, skip the step, stop training),
            ``raise`` (dump, then raise) or ``skip`` (dump, skip the step, go on).
    """

    enabled: bool = True
    log_every_n_steps: int = 0
    histogram_every_n_steps: int = 500
    on_nonfinite: str = "stop"

    def validate(self) -> None:
        """Reject unknown actions and negative intervals."""
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise ConfigError(
                f"monitor.on_nonfinite must be one of {list(NONFINITE_ACTIONS)}, got {self.on_nonfinite!r}"
            )
        if self.log_every_n_steps < 0 or self.histogram_every_n_steps < 0:
            raise ConfigError("monitor intervals must be >= 0")


@dataclass
class ByolConfig:
    """A whole BYOL pretraining run.

    Shares its key names with :class:`~backend.training.config.ExperimentConfig`: ``data.img_size``
    (the one input size: the backbone is built for it), ``trainer.*`` (:class:`TrainerConfig`),
    ``log_dir``, ``experiment_name``, ``seed``, ``resume_version``. Old keys load with a
    deprecation warning (:attr:`DEPRECATED_KEYS`).

    Attributes:
        data: Unlabelled image folders and views.
        model: Backbone (as in the supervised model section) and BYOL heads.
        optim: Optimiser, LR and EMA momentum schedules.
        trainer: Hardware, precision, length, checkpoint interval.
        monitor: Gradient/weight monitoring and the non-finite guard.
        log_dir: Root of run folders: ``<log_dir>/<experiment_name>/version_N``.
        experiment_name: Name of the experiment folder.
        seed: Global seed (Python, numpy, torch, workers, image subset).
        resume: Continue the newest ``version_N`` that has a ``ckpts/last.ckpt``.
        resume_version: Continue this ``version_N`` from its ``ckpts/last.ckpt``.
        export_name: File name of the backbone export written into the run folder.
    """

    DEPRECATED_KEYS: ClassVar[dict[str, DeprecatedKey]] = {
        **DEPRECATED_MODEL_KEYS,
        "model.use_metadata": removed(None, "BYOL pretrains the backbone alone, without metadata"),
        "output_dir": renamed("log_dir"),
    }

    data: UnlabelledDataConfig = field(default_factory=UnlabelledDataConfig)
    model: ByolModelConfig = field(default_factory=ByolModelConfig)
    optim: ByolOptimConfig = field(default_factory=ByolOptimConfig)
    trainer: ByolTrainerConfig = field(default_factory=ByolTrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log_dir: str = "runs/byol"
    experiment_name: str = "byol"
    seed: int = 42
    resume: bool = False
    resume_version: int | None = None
    export_name: str = "backbone.safetensors"

    def validate(self) -> None:
        """Keep the export a plain file name."""
        if not self.export_name.endswith(".safetensors") or "/" in self.export_name:
            raise ConfigError(f"export_name must be a file name ending in .safetensors, got {self.export_name!r}")


def byol_config_from(data: dict[str, Any] | None) -> ByolConfig:
    """Build a :class:`ByolConfig` from a nested dict (a checkpoint's embedded copy, parsed YAML)."""
    return from_dict(ByolConfig, data)
