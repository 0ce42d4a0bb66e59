"""Experiment config: data + model + optimisation + loss + trainer, as one typed tree.

``cfgs/default.yaml`` and ``cfgs/train/*.yaml`` are layered onto these defaults; ``key=value``
overrides come last (see :func:`backend.config.load_config`). The resolved tree is saved as
``config.yaml`` in every run folder and embedded in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from backend.config import DeprecatedKey, renamed
from backend.data.config import DataConfig
from backend.errors import ConfigError
from backend.models.config import DEPRECATED_MODEL_KEYS, ModelConfig

PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, and a frozen-backbone first stage.

    Attributes:
        lr: Peak learning rate of the heads; backbone stages get ``lr * layer_decay**depth``.
        weight_decay: AdamW weight decay (never applied to GeM p, norms, biases, tokens).
        layer_decay: Layer-wise learning-rate decay per backbone stage, stem included (1 = off).
        warmup_epochs: Epochs of linear LR warm-up (fractions allowed); a frozen backbone warms up
            from the step it is unfrozen at.
        freeze_epochs: Epochs with the backbone frozen (heads only) before full fine-tuning.
        min_lr_ratio: Final LR as a fraction of the peak.
        betas: AdamW betas.
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_epochs: float = 1.0
    freeze_epochs: int = 1
    min_lr_ratio: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self) -> None:
        """Reject values that make no schedule."""
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.warmup_epochs < 0 or self.freeze_epochs < 0:
            raise ConfigError("optim.warmup_epochs and optim.freeze_epochs must be >= 0")


@dataclass
class LossConfig:
    """Multi-task loss: ``alpha * CE(diagnosis) + beta * thickness + gamma * BCE(malignant)``.

    Attributes:
        alpha: Weight of the class-weighted diagnosis cross-entropy.
        beta: Weight of the interval thickness loss (melanomas with a thickness label only).
        gamma: Weight of the binary loss on the derived malignant probability; it lets rows
            without an 8-class diagnosis (UNK, label-only) still teach benign vs malignant.
        label_smoothing: Cross-entropy label smoothing.
        class_weighted: Weight the cross-entropy by inverse train-split class frequency.
        logit_adjustment: ``tau`` of the logit-adjusted cross-entropy (0 = off): the train split's
            ``tau * log(class frequency)`` is added to the logits inside the loss, the other cure
            for class imbalance (``backend.training.losses.logit_adjustment_offsets``); it replaces
            ``class_weighted``, so the two cannot both be on.
        thickness_loss: ``smooth_l1`` or ``l2`` distance outside the label interval.
    """

    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 0.5
    label_smoothing: float = 0.0
    class_weighted: bool = True
    logit_adjustment: float = 0.0
    thickness_loss: str = "smooth_l1"

    def validate(self) -> None:
        """Reject negative weights and unknown loss kinds."""
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (self.logit_adjustment >= 0 and math.isfinite(self.logit_adjustment)):
            raise ConfigError(f"loss.logit_adjustment must be a number >= 0 (0 = off), got {self.logit_adjustment}")
        if self.logit_adjustment > 0 and self.class_weighted:
            raise ConfigError(f"loss.logit_adjustment ({self.logit_adjustment}) and loss.class_weighted both correct "
                              "for class imbalance and would count it twice: set loss.class_weighted to false")
        if self.thickness_loss not in ("smooth_l1", "l2"):
            raise ConfigError(f"loss.thickness_loss must be smooth_l1 or l2, got {self.thickness_loss!r}")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets, shared by supervised training and BYOL pretraining.

    Both trainer sections are this class (the supervised one adds its validation-loop keys, BYOL's
    only changes defaults), so a setting has one name everywhere: in YAML, in ``key=value``
    overrides and as a flag of ``scripts/train.py`` and ``scripts/pretrain_byol.py``.

    Attributes:
        max_epochs: Number of epochs (the old name ``epochs`` still loads, with a deprecation warning).
        max_steps: Stop after this many optimiser steps (-1 = no limit).
        accelerator: ``cpu``, ``gpu``, ``auto``...
        devices: ``auto``, a count (``2``) or a list of ids (``0,1``).
        strategy: ``auto``, ``ddp``, ``ddp_spawn``... (SLURM is detected by Lightning under ``srun``).
        num_nodes: Number of nodes for multi-node DDP.
        sync_batchnorm: Synchronise BatchNorm statistics across DDP processes (GPUs only).
        precision: ``32``, ``16-mixed`` or ``bf16-mixed`` (bf16 is much slower on CPUs without bf16).
        gradient_clip_val: Clip gradients to this global norm (0 = off).
        accumulate_grad_batches: Gradient accumulation steps.
        limit_train_batches: Fraction (a float: 1.0 is every batch) or count (an int: 1 is one batch) of
            train batches per epoch, as Lightning reads it.
        log_every_n_steps: Logging interval.
        checkpoint_every_n_steps: Also refresh ``last.ckpt`` every this many optimiser steps (0 = once
            per epoch), so a long epoch interrupted midway loses little.
        deterministic: Ask torch for deterministic algorithms.
        channels_last: Train in channels-last memory layout (faster convolutions on CPUs and recent
            GPUs; the weights are unchanged).
    """

    DEPRECATED_KEYS: ClassVar[dict[str, DeprecatedKey]] = {"epochs": renamed("max_epochs")}

    max_epochs: int = 30
    max_steps: int = -1
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    sync_batchnorm: bool = False
    precision: str = "32"
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    limit_train_batches: int | float = 1.0
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 0
    deterministic: bool = False
    channels_last: bool = False

    def validate(self) -> None:
        """Reject unknown precisions and impossible counts."""
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_epochs", "accumulate_grad_batches", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"trainer.max_steps must be -1 (no limit) or >= 1, got {self.max_steps}")
        if self.sync_batchnorm and self.accelerator == "cpu":
            raise ConfigError("trainer.sync_batchnorm needs GPUs: torch's SyncBatchNorm has no CPU implementation")
        for name in ("checkpoint_every_n_steps", "gradient_clip_val"):
            if getattr(self, name) < 0:
                raise ConfigError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")

    def lightning_devices(self) -> int | str | list[int]:
        """Translate ``devices`` into what ``lightning.Trainer(devices=...)`` takes."""
        text = str(self.devices).strip()
        if text == "auto":
            return "auto"
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"trainer.devices must be auto, a count or a list like 0,1; got {text!r}") from None

    def lightning_precision(self) -> str:
        """``32`` -> ``32-true``; the mixed modes pass through."""
        return "32-true" if self.precision == "32" else self.precision


@dataclass
class SupervisedTrainerConfig(TrainerConfig):
    """:class:`TrainerConfig` plus what only supervised training has: a validation loop.

    Attributes:
        monitor: Metric that picks ``best.ckpt``.
        early_stop_metric: Metric watched by early stopping.
        early_stop: Early-stopping patience in epochs (0 = off).
        limit_val_batches: Fraction (float) or count (int) of validation batches per epoch, as for
            ``limit_train_batches``.
        fast_dev_run: Run one batch of train/val to smoke-test a config.
        ema_decay: Keep an exponential moving average of the weights with this decay per optimiser
            step (0 = off; Lightning's ``EMAWeightAveraging``): validation, ``best.ckpt`` and
            ``last.ckpt`` then hold the averaged weights (``last.ckpt`` keeps the raw ones too, to
            resume). 0.997 averages over about the last 330 steps.
        on_nonfinite: On a NaN/inf loss or gradient: ``stop`` (dump the state, skip the step, stop
            training, so ``last.ckpt`` keeps finite weights), ``raise`` or ``skip`` (dump, skip the
            step, go on); ``backend.training.monitor.GradWeightMonitor``.
    """

    monitor: str = "val/auroc_malignant"
    early_stop_metric: str = "val/balanced_accuracy"
    early_stop: int = 0
    limit_val_batches: int | float = 1.0
    fast_dev_run: bool = False
    ema_decay: float = 0.0
    on_nonfinite: str = "stop"

    def validate(self) -> None:
        """The checks of :class:`TrainerConfig` plus a non-negative patience and an EMA decay in [0, 1)."""
        super().validate()
        if self.on_nonfinite not in ("stop", "raise", "skip"):
            raise ConfigError(f"trainer.on_nonfinite must be one of stop, raise, skip; got {self.on_nonfinite!r}")
        if self.early_stop < 0:
            raise ConfigError(f"trainer.early_stop must be >= 0, got {self.early_stop}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"trainer.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")


@dataclass
class ExperimentConfig:
    """A whole supervised experiment; a checkpoint's embedded copy rebuilds model and preprocessing.

    One key per setting: the network's input size is ``data.img_size``, the metadata switch is
    ``data.use_metadata`` (the metadata encoder gives the width), the length is
    ``trainer.max_epochs`` and the run root is ``log_dir``, as in :class:`~backend.training.byol_config.ByolConfig`.
    The old keys (``model.img_size``, ``model.use_metadata``, ``model.meta_dim``,
    ``trainer.epochs``, ``output_dir``) still load with a deprecation warning (:attr:`DEPRECATED_KEYS`).

    Attributes:
        data: Labels, images, splits, batching, preprocessing.
        model: Backbone, metadata fusion and heads.
        optim: Optimiser and schedule.
        loss: Multi-task loss weights.
        trainer: Hardware, precision, length, checkpoints.
        log_dir: Root of run folders: ``<log_dir>/<experiment_name>/version_N``.
        experiment_name: Name of the experiment folder.
        seed: Global seed (Python, numpy, torch, dataloader workers).
        resume_version: Continue ``version_N`` from its ``ckpts/last.ckpt``.
    """

    DEPRECATED_KEYS: ClassVar[dict[str, DeprecatedKey]] = {
        **DEPRECATED_MODEL_KEYS,
        "model.use_metadata": DeprecatedKey("data.use_metadata", moved=True),
        "output_dir": renamed("log_dir"),
    }

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: SupervisedTrainerConfig = field(default_factory=SupervisedTrainerConfig)
    log_dir: str = "runs"
    experiment_name: str = "default"
    seed: int = 42
    resume_version: int | None = None
