"""``fit(cfg)``: one supervised experiment from a config to a run folder with checkpoints.

A plain function (the CLI in ``scripts/train.py`` is a thin wrapper), so tests and notebooks call
it directly. Run layout::

    <log_dir>/<experiment_name>/version_N/
        config.yaml              resolved experiment config
        splits.csv               image_id -> train/val/test used by this run
        ckpts/best.ckpt          best validation ``trainer.monitor``
        ckpts/last.ckpt          end of the latest epoch (what --resume_version continues)
        metrics.csv, hparams.yaml, events.out.tfevents.*   CSV and TensorBoard logs
        metrics.partK.csv        the CSV log before the K-th resume (Lightning restarts metrics.csv)

Checkpoints are written atomically and read with ``weights_only=True``
(``backend.training.checkpoint_io.SafeCheckpointIO``): a run killed at any moment resumes from an
intact ``last.ckpt``, and a ``last.ckpt`` carrying pickled code is refused before it runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from backend.config import from_dict, read_yaml, save_config, to_dict
from backend.data.datamodule import LesionDataModule
from backend.data.transforms import preprocessing_dict
from backend.errors import ConfigError
from backend.files import safe_torch_load
from backend.models.batchnorm import reestimate_batchnorm
from backend.models.heads import ThicknessScaler
from backend.models.lesion_net import build_experiment_model
from backend.training.checkpoint_io import SafeCheckpointIO, remove_stale_temp_files
from backend.training.config import ExperimentConfig
from backend.training.lightning_trainer import lightning_trainer
from backend.training.memory_format import ChannelsLast
from backend.training.monitor import GradWeightMonitor
from backend.training.run_dirs import (
    keep_metrics_csv,
    next_version_dir,
    refuse_changed_settings,
    resume_version_dir,
)
from backend.training.supervised import LesionModule

log = logging.getLogger(__name__)

RUN_DIR_ENV = "DERMALENS_RUN_DIR"


@dataclass
class RunResult:
    """Where a finished run left its files, and its final metrics."""

    run_dir: Path
    best_ckpt: Path | None
    last_ckpt: Path | None
    metrics: dict[str, float]


def resolve_run_dir(cfg: ExperimentConfig) -> tuple[Path, Path | None]:
    """Pick the run folder and, when resuming, the checkpoint to resume from.

    A new run takes the next free ``version_N``. The choice is made once, by the process that
    starts training, and handed to the DDP worker processes that Lightning launches through the
    environment, so every rank writes into the same folder.

    Raises:
        ConfigError: When ``resume_version`` names a run without ``ckpts/last.ckpt``.
    """
    root = Path(cfg.log_dir) / cfg.experiment_name
    if cfg.resume_version is not None:
        return resume_version_dir(root, cfg.resume_version)
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":  # a worker Lightning's DDP launcher started
        return Path(inherited), None
    return next_version_dir(root), None


#: Data settings a run's checkpoint and split depend on: the table, how it is split, what the network sees.
_RESUME_DATA_KEYS: tuple[str, ...] = ("csv", "img_dir", "format", "metadata_csv", "skip_missing", "split",
                                      "img_size", "mean", "std", "use_metadata", "color_constancy", "hair_removal")


def _resume_settings(cfg: ExperimentConfig) -> dict:
    """``{dotted key: value}`` of what a resumed run must share with its start: the model and the data keys above.

    Training length, optimiser, loss and logging may change on resume (e.g. more epochs); an unset
    ``data.mean``/``std`` is taken from the run, and so are the start weights (the checkpoint holds
    every weight, so a start file moved since does not matter), so they are left out.
    """
    data = to_dict(cfg.data)
    keys = {f"model.{k}": v for k, v in to_dict(cfg.model).items() if k not in cfg.model.START_WEIGHT_KEYS}
    keys.update({f"data.{k}": data[k] for k in _RESUME_DATA_KEYS if not (k in ("mean", "std") and data[k] is None)})
    return keys


def prepare_resume(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Make a resumed run continue on its own split, and refuse one whose model or data settings changed.

    The split is rebuilt from the run's ``splits.csv`` (``data.split_csv``), never recomputed: a
    table that changed since (say more rows skipped as missing) would move images between train and
    test. Nothing of the run folder is rewritten.

    Raises:
        ConfigError: Naming the settings that differ from the run's saved ``config.yaml``.
    """
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        run_cfg = from_dict(ExperimentConfig, read_yaml(saved_path))
        saved, current = _resume_settings(run_cfg), _resume_settings(cfg)
        refuse_changed_settings(run_dir, {k: saved.get(k) for k in current}, current)
        for key in cfg.model.START_WEIGHT_KEYS:  # the run's record of where it started stays true
            setattr(cfg.model, key, getattr(run_cfg.model, key))
        if cfg.data.mean is None and cfg.data.std is None:
            cfg.data.mean, cfg.data.std = run_cfg.data.mean, run_cfg.data.std
    splits = run_dir / "splits.csv"
    if splits.is_file():
        cfg.data.split_csv = str(splits)


def refuse_double_imbalance_correction(cfg: ExperimentConfig) -> None:
    """Refuse to train with class-balanced sampling and a loss that corrects for the imbalance as well.

    Either one makes rare diagnoses count as much as common ones; both together over-correct. Checked
    when training starts, not when a config loads, so checkpoints written before still load.

    Raises:
        ConfigError: Naming the keys to choose between.
    """
    if not cfg.data.balanced_sampler:
        return
    if cfg.loss.class_weighted:
        raise ConfigError("data.balanced_sampler and loss.class_weighted both correct for class imbalance; "
                          "set loss.class_weighted=false to sample, or data.balanced_sampler=false to weight")
    if cfg.loss.logit_adjustment > 0:
        raise ConfigError(f"data.balanced_sampler and loss.logit_adjustment ({cfg.loss.logit_adjustment}) both "
                          "correct for class imbalance; keep one of them")


def _trainer_strategy(cfg: ExperimentConfig):
    """DDP with parameters that get no gradient in a step needs ``find_unused_parameters``.

    That is a frozen first stage (frozen parameters), and metadata fusion without metadata dropout
    (the learned "metadata missing" embedding is only used when a row's metadata is dropped).
    """
    strategy = cfg.trainer.strategy
    unused = cfg.optim.freeze_epochs > 0 or (cfg.data.use_metadata and cfg.model.meta_dropout == 0)
    if strategy == "ddp" and unused:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    return strategy


def build_trainer(cfg: ExperimentConfig, run_dir: Path):
    """Lightning Trainer with checkpoints, early stopping, TensorBoard and CSV logs in ``run_dir``."""
    from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


    t = cfg.trainer
    version = run_dir.name
    loggers = [
        TensorBoardLogger(save_dir=run_dir.parent.parent, name=run_dir.parent.name, version=version,
                          default_hp_metric=False),
        CSVLogger(save_dir=run_dir.parent.parent, name=run_dir.parent.name, version=version),
    ]
    ckpt_dir = run_dir / "ckpts"
    # Two checkpoint callbacks: Lightning 2.6 refreshes ``save_last`` only when a top-k checkpoint was
    # written, so ``last.ckpt`` gets its own unmonitored callback that writes it every epoch (and
    # every ``checkpoint_every_n_steps`` optimiser steps when set) whatever the metric did.
    # Lightning takes either a step or an epoch period per callback, so with ``checkpoint_every_n_steps``
    # a second one refreshes ``last.ckpt`` at every epoch end too: otherwise the finished run's
    # last.ckpt would miss the steps after the last multiple of N.
    every_steps = t.checkpoint_every_n_steps or None
    last_periods = [{"every_n_epochs": 1}] + ([{"every_n_train_steps": every_steps}] if every_steps else [])
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=t.monitor, mode="max", save_top_k=1,
                        enable_version_counter=False, auto_insert_metric_name=False),
        *(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, **period,
                          save_on_train_epoch_end=True, enable_version_counter=False, auto_insert_metric_name=False)
          for period in last_periods),
        LearningRateMonitor(logging_interval="step"),
    ]
    if t.channels_last:
        callbacks.append(ChannelsLast())
    if t.early_stop > 0:
        callbacks.append(EarlyStopping(monitor=t.early_stop_metric, mode="max", patience=t.early_stop))
    # A NaN/inf loss or gradient never reaches the weights (or the average, or last.ckpt): dumped and stopped.
    callbacks.append(GradWeightMonitor(on_nonfinite=t.on_nonfinite, dump_dir=run_dir / "dumps"))
    if t.ema_decay > 0:  # validated and checkpointed on the averaged weights
        callbacks.append(EMAWeightAveraging(decay=t.ema_decay))
    return lightning_trainer(
        default_root_dir=run_dir,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.lightning_devices(),
        strategy=_trainer_strategy(cfg),
        num_nodes=t.num_nodes,
        sync_batchnorm=t.sync_batchnorm,
        precision=t.lightning_precision(),
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        fast_dev_run=t.fast_dev_run,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=loggers,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],  # atomic same-folder writes, weights_only reads (resume included)
        # Under DDP every loader is sharded, the class-balanced sampler too (Lightning wraps it in a
        # DistributedSamplerWrapper: each process trains on its own share of the balanced draw).
        use_distributed_sampler=True,
    )


def resolve_input_normalisation(cfg: ExperimentConfig, net) -> None:
    """Fill ``data.mean``/``data.std`` from the backbone when the config leaves them unset.

    The backbone knows what its start weights expect (ImageNet mean/std, or ``[-1, 1]`` for
    TensorFlow-ported weights); writing it into the data config before the run's config and
    checkpoints are saved makes it travel with the preprocessing into every checkpoint and bundle.
    """
    if cfg.data.mean is None:
        cfg.data.mean = [float(v) for v in net.backbone.input_mean]
    if cfg.data.std is None:
        cfg.data.std = [float(v) for v in net.backbone.input_std]


#: Preprocessing a backbone learns to expect: a fine-tune that differs sees inputs its start never saw.
_START_PREPROCESSING_KEYS: tuple[str, ...] = ("color_constancy", "color_constancy_power", "mean", "std",
                                              "hair_removal")


def start_preprocessing_differences(cfg: ExperimentConfig) -> list[str]:
    """How this run's preprocessing differs from what a DermaLens export it starts from was pretrained with.

    A BYOL export (``backbone.safetensors``) records its preprocessing in its header. Starting from
    it with colour constancy off, or other normalisation, feeds the backbone inputs it never saw:
    allowed (it may be meant), but said. Other start files record nothing and give no difference.
    """
    path = cfg.model.pretrained_path
    if not path or not str(path).endswith(".safetensors"):
        return []
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        recorded = json.loads(header.get("preprocessing") or "null")
    except (OSError, ValueError, SafetensorError):
        return []  # unreadable here: loading the weights reports it
    if not isinstance(recorded, dict):
        return []
    mine = preprocessing_dict(cfg.data)
    return [f"{key}: pretrained with {recorded[key]!r}, fine-tuned with {mine[key]!r}"
            for key in _START_PREPROCESSING_KEYS if key in recorded and key in mine and recorded[key] != mine[key]]


def reestimate_start_batchnorm(cfg: ExperimentConfig, net, datamodule) -> int:
    """Re-estimate the start weights' BatchNorm statistics on the first training images (eval transform).

    Deterministic (the training split in table order, no augmentation), so every DDP rank computes
    the same statistics. Only for a fresh run: a resumed run's checkpoint already holds them.
    """
    import itertools

    from torch.utils.data import DataLoader


    dataset = datamodule.dataset(datamodule.train_table.sample(frac=1.0, random_state=cfg.seed),
                                 replace_unreadable=True)  # no black image among the statistics
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    images = (batch["image"] for batch in itertools.islice(loader, cfg.model.bn_reestimate_batches))
    seen = reestimate_batchnorm(net.backbone, images)
    log.info("BatchNorm statistics of the start weights re-estimated on %d training images", seen)
    return seen


def fit(cfg: ExperimentConfig, test: bool = True) -> RunResult:
    """Train (or resume) one experiment and return where its checkpoints are.

    Args:
        cfg: The resolved experiment config.
        test: After training, evaluate ``best.ckpt`` on the run's test split (when it has one).

    Returns:
        The run folder, checkpoint paths and the last logged metrics.
    """
    import lightning as L


    refuse_double_imbalance_correction(cfg)
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    if resume_ckpt is not None:
        prepare_resume(cfg, run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the DDP workers Lightning launches
    L.seed_everything(cfg.seed, workers=True)

    datamodule = LesionDataModule(cfg.data)
    datamodule.setup("fit")
    # data.use_metadata is the one switch; the fitted encoder, stored in every checkpoint, gives the width.
    encoder = datamodule.metadata_encoder if cfg.data.use_metadata else None
    train_table = datamodule.train_table
    scaler = ThicknessScaler.fit(train_table["thickness_lo_mm"].to_numpy(), train_table["thickness_hi_mm"].to_numpy())

    # A resumed run's checkpoint replaces the start weights: never read (or download) them again.
    net = build_experiment_model(cfg.model if resume_ckpt is None else cfg.model.without_start_weights(),
                                 cfg.data, encoder)
    resolve_input_normalisation(cfg, net)
    if resume_ckpt is None:
        for difference in start_preprocessing_differences(cfg):
            log.warning("start weights %s: %s", cfg.model.pretrained_path, difference)
    if resume_ckpt is None and cfg.model.bn_reestimate_batches > 0:
        reestimate_start_batchnorm(cfg, net, datamodule)
    module = LesionModule(
        net,
        config=to_dict(cfg),
        class_weights=[float(w) for w in datamodule.class_weights],
        class_priors=[float(p) for p in datamodule.class_priors],
        thickness_scaler=scaler.to_dict(),
        metadata_encoder=encoder.to_dict() if encoder is not None else None,
        preprocessing=preprocessing_dict(cfg.data),
    )
    if resume_ckpt is not None and os.environ.get("LOCAL_RANK", "0") == "0":
        # Here, after everything that can refuse the resume: a refused one leaves the run folder as it was.
        remove_stale_temp_files(resume_ckpt.parent)  # half-written files of a killed run
        keep_metrics_csv(run_dir)  # Lightning's CSVLogger would delete the curves logged before the resume
    trainer = build_trainer(cfg, run_dir)
    if trainer.is_global_zero and resume_ckpt is None:  # a resumed run keeps the files it started with
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        datamodule.write_splits(run_dir / "splits.csv")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)

    ckpt_cb = trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None
    last = run_dir / "ckpts" / "last.ckpt"
    if test and not cfg.trainer.fast_dev_run and datamodule.has_split("test"):
        # The weights validation chose, as export will load them: with ``trainer.ema_decay`` the
        # checkpoint's state_dict is the average, which ``ckpt_path=best`` would swap for the raw
        # weights (Lightning's weight averaging restores those when a checkpoint is loaded).
        if best is not None:
            module.load_state_dict(safe_torch_load(best)["state_dict"])
        trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return RunResult(run_dir, best, last if last.is_file() else None, metrics)
