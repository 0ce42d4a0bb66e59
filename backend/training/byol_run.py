"""``pretrain(cfg)``: one BYOL pretraining run from a config to a run folder and a backbone export.

A plain function (``scripts/pretrain_byol.py`` is a thin wrapper), so tests and notebooks call it
directly. Run layout::

    <log_dir>/<experiment_name>/version_N/
        config.yaml              resolved BYOL config
        images.txt               the images pretraining used
        ckpts/last.ckpt          saved every epoch and every trainer.checkpoint_every_n_steps steps
        backbone.safetensors     the online backbone (keys of the Backbone's own state_dict)
        backbone.json            its metadata: backbone name and kwargs, preprocessing, step
        dumps/                   GradWeightMonitor dumps, if a loss or gradient went non-finite
        metrics.csv, hparams.yaml, events.out.tfevents.*   CSV and TensorBoard logs
        metrics.partK.csv        the CSV log before the K-th resume (Lightning restarts metrics.csv)

``scripts/train.py --pretrain_ckpt <run>/backbone.safetensors`` (i.e. ``model.pretrained_path``)
starts a supervised model from the export.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.config import from_dict, read_yaml, save_config, to_dict
from backend.data.datamodule import augmentation_loader_options
from backend.data.transforms import preprocessing_dict
from backend.data.unlabelled import UnlabelledImageDataset
from backend.errors import CheckpointError, ConfigError
from backend.files import safe_torch_load
from backend.models.batchnorm import reestimate_batchnorm
from backend.models.lesion_net import backbone_kwargs
from backend.models.registry import create_backbone, load_backbone_weights
from backend.training.byol import BYOLModule, build_backbone
from backend.training.byol_config import ByolConfig, byol_config_from
from backend.training.checkpoint_io import SafeCheckpointIO
from backend.training.lightning_trainer import lightning_trainer
from backend.training.memory_format import ChannelsLast
from backend.training.monitor import GradWeightMonitor
from backend.training.run_dirs import (
    last_checkpoint,
    latest_resumable_version,
    next_version_dir,
    refuse_changed_settings,
    resume_version_dir,
)

log = logging.getLogger(__name__)

RUN_DIR_ENV = "DERMALENS_BYOL_RUN_DIR"
EXPORT_FORMAT = "dermalens.backbone/1"
ONLINE_PREFIX = "online_backbone."


@dataclass
class PretrainResult:
    """Where a finished (or stopped) pretraining run left its files.

    Attributes:
        run_dir: The run folder.
        last_ckpt: ``ckpts/last.ckpt`` (None if nothing was saved).
        export: The backbone export (None on DDP ranks other than 0).
        global_step: Optimiser steps done.
        metrics: The last logged scalar metrics.
        nonfinite_events: What the monitor caught (empty for a healthy run).
    """

    run_dir: Path
    last_ckpt: Path | None
    export: Path | None
    global_step: int
    metrics: dict[str, float]
    nonfinite_events: list[dict[str, Any]] = field(default_factory=list)


# -- run folder -----------------------------------------------------------------------------------


def resolve_run_dir(cfg: ByolConfig) -> tuple[Path, Path | None]:
    """Pick the run folder and, when resuming, the checkpoint to continue from.

    ``resume_version`` must name a run with a ``ckpts/last.ckpt``; ``resume`` continues the newest
    run that has one and starts a new run when there is none (so a requeued job can always pass it).
    The choice is made by the launching process and inherited by DDP workers through the environment.

    Raises:
        ConfigError: When ``resume_version`` names a run without ``ckpts/last.ckpt``.
    """
    root = Path(cfg.log_dir) / cfg.experiment_name
    if cfg.resume_version is not None:
        return resume_version_dir(root, cfg.resume_version)
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":  # a worker Lightning's DDP launcher started
        inherited_dir = Path(inherited)
        last = last_checkpoint(inherited_dir)
        return inherited_dir, last if cfg.resume and last.is_file() else None
    if cfg.resume:
        version = latest_resumable_version(root)
        if version is not None:
            return resume_version_dir(root, version)
        log.warning("resume: no run with ckpts/last.ckpt under %s; starting a new run", root)
    return next_version_dir(root), None


#: Data settings a resumed run must share with its start: which images it learns from, and how it sees them.
_RESUME_DATA_KEYS: tuple[str, ...] = ("dirs", "exclude_list", "max_images", "img_size", "color_constancy")


def _resume_keys(cfg: ByolConfig) -> dict[str, Any]:
    """What a resumed run must share with its start: the network (not its start weights) and its images."""
    data = to_dict(cfg.data)
    keys = {f"model.{k}": v for k, v in to_dict(cfg.model).items() if k not in cfg.model.START_WEIGHT_KEYS}
    keys.update({f"data.{k}": data[k] for k in _RESUME_DATA_KEYS})
    keys["seed"] = cfg.seed  # draws the max_images subset
    return keys


def check_resume_config(cfg: ByolConfig, run_dir: Path) -> None:
    """Refuse to resume a run whose network or images would differ, and take the rest of its record.

    The network (model section, input size) must fit the checkpoint; the images (folders, the
    exclusion list that keeps validation and test images out, the subset) must be the run's, or a
    resume could pretrain on images it was told to leave out. The run's start weights and input
    normalisation are kept as recorded: the checkpoint holds every weight, so a start file moved
    since does not matter.

    Raises:
        ConfigError: Naming the keys that differ.
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    run_cfg = from_dict(ByolConfig, read_yaml(saved_path))
    refuse_changed_settings(run_dir, _resume_keys(run_cfg), _resume_keys(cfg))
    for key in cfg.model.START_WEIGHT_KEYS:
        setattr(cfg.model, key, getattr(run_cfg.model, key))
    if cfg.data.mean is None and cfg.data.std is None:
        cfg.data.mean, cfg.data.std = run_cfg.data.mean, run_cfg.data.std


def _run_images(run_dir: Path) -> list[str] | None:
    """The images a run started with (its ``images.txt``), or None when it has none."""
    listed = run_dir / "images.txt"
    if not listed.is_file():
        return None
    return [line for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- checkpoints and export -----------------------------------------------------------------------


def _last_checkpoint_callback(every_n_steps: int, ckpt_dir: Path):
    from lightning.pytorch.callbacks import Callback

    class LastCheckpoint(Callback):
        """Write ``ckpts/last.ckpt`` at every epoch end and every ``every_n_steps`` optimiser steps, atomically."""

        def __init__(self) -> None:
            self.last_saved = -1

        def save(self, trainer: Any) -> None:
            if trainer.global_step == self.last_saved or trainer.sanity_checking:
                return
            self.last_saved = trainer.global_step
            tmp = ckpt_dir / ".last.ckpt.tmp"
            trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, ckpt_dir / "last.ckpt")  # a killed run never leaves a half-written last.ckpt

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if every_n_steps and trainer.global_step % every_n_steps == 0:
                self.save(trainer)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.save(trainer)

    return LastCheckpoint()


def export_metadata(cfg: ByolConfig, global_step: int = 0, **extra: Any) -> dict[str, Any]:
    """What is stored beside the exported weights: enough to rebuild the backbone and its input."""
    return {
        "format": EXPORT_FORMAT,
        "source": "byol",
        "backbone": cfg.model.backbone,
        "backbone_kwargs": backbone_kwargs(cfg.model, cfg.data.img_size),
        "img_size": cfg.data.img_size,
        "preprocessing": preprocessing_dict(cfg.data.as_data_config()),
        "global_step": int(global_step),
        "config": to_dict(cfg),
        **extra,
    }


def export_backbone(backbone: Any, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``backbone.state_dict()`` as safetensors, with ``metadata`` in its header and a ``.json`` sidecar.

    Returns:
        The ``.safetensors`` path.
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(save(state, metadata=header))  # an ordinary file (umask permissions), renamed into place
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weights and the metadata of a backbone export.

    Raises:
        CheckpointError: The file is not a readable DermaLens backbone export.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone export not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from None
    if header.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: not a DermaLens backbone export (metadata format {header.get('format')!r})")
    meta: dict[str, Any] = {}
    for key, value in header.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return state, meta


def backbone_from_export(path: str | Path, random_init: bool = False) -> tuple[Any, dict[str, Any]]:
    """Rebuild the exported backbone (or, with ``random_init``, the same architecture untrained).

    Returns:
        The backbone and the export's metadata.
    """
    _, meta = read_export(path)
    backbone = create_backbone(meta["backbone"], **meta["backbone_kwargs"])
    if not random_init:
        report = load_backbone_weights(backbone, path)
        if report.missing:
            raise CheckpointError(f"{path}: export does not cover the backbone: {report.summary()}")
    return backbone, meta


def export_from_checkpoint(ckpt_path: str | Path, out: str | Path | None = None) -> Path:
    """Export the online backbone of a BYOL checkpoint (e.g. ``last.ckpt`` of a running job).

    Args:
        ckpt_path: A checkpoint written by :func:`pretrain`.
        out: Output ``.safetensors``; default ``<run folder>/<export_name>`` for ``<run>/ckpts/*.ckpt``.

    Raises:
        CheckpointError: The file is unsafe, unreadable or not a BYOL checkpoint.
    """
    ckpt_path = Path(ckpt_path)
    ckpt = safe_torch_load(ckpt_path)
    hparams, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    if not isinstance(hparams, dict) or "config" not in hparams or not isinstance(state, dict):
        raise CheckpointError(f"{ckpt_path}: not a BYOL checkpoint (no embedded config or state_dict)")
    try:
        cfg = byol_config_from(hparams["config"])
    except ConfigError as err:
        raise CheckpointError(f"{ckpt_path}: not a BYOL checkpoint ({err})") from None
    weights = {k[len(ONLINE_PREFIX):]: v for k, v in state.items() if k.startswith(ONLINE_PREFIX)}
    cfg.model.pretrained_path = None  # the checkpoint has the weights; the start file may be gone
    backbone = build_backbone(cfg.model, cfg.data.img_size)
    try:
        backbone.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt_path}: online backbone does not match its config: {err}") from None
    out = Path(out) if out is not None else ckpt_path.parent.parent / cfg.export_name
    meta = export_metadata(cfg, int(ckpt.get("global_step", 0)), checkpoint=str(ckpt_path))
    return export_backbone(backbone, out, meta)


# -- the run --------------------------------------------------------------------------------------


def build_trainer(cfg: ByolConfig, run_dir: Path, callbacks: list[Any]):
    """Lightning Trainer with TensorBoard and CSV logs in ``run_dir`` (no validation loop)."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


    t = cfg.trainer
    save_dir, name, version = run_dir.parent.parent, run_dir.parent.name, run_dir.name
    return lightning_trainer(
        default_root_dir=run_dir,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.lightning_devices(),
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        sync_batchnorm=t.sync_batchnorm,
        precision=t.lightning_precision(),
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_checkpointing=False,  # LastCheckpoint writes ckpts/last.ckpt
        logger=[TensorBoardLogger(save_dir=save_dir, name=name, version=version, default_hp_metric=False),
                CSVLogger(save_dir=save_dir, name=name, version=version)],
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="step"),
                   *([ChannelsLast()] if t.channels_last else [])],
        plugins=[SafeCheckpointIO()],  # resume reads last.ckpt with weights_only=True, like supervised runs
    )


def set_backbone_normalisation(cfg: ByolConfig) -> None:
    """Fill ``data.mean``/``data.std`` from the backbone when unset, as supervised training does.

    The views must be normalised as the start weights expect (ImageNet's statistics for most timm
    backbones, ``[-1, 1]`` for the TensorFlow MobileNetV2); the exported preprocessing then records it.
    """
    if cfg.data.mean is not None and cfg.data.std is not None:
        return
    backbone = build_backbone(cfg.model, cfg.data.img_size)  # as BYOLModule builds it: start weights decide
    if cfg.data.mean is None:
        cfg.data.mean = [float(v) for v in backbone.input_mean]
    if cfg.data.std is None:
        cfg.data.std = [float(v) for v in backbone.input_std]


def reestimate_start_batchnorm(module: Any, dataset: Any, cfg: ByolConfig) -> int:
    """Re-estimate a pretrained start's BatchNorm statistics on BYOL views, then copy it to the target.

    Folded BatchNorm (the TensorFlow MobileNetV2) would otherwise normalise the first training
    batches with statistics that do not match, and BYOL would start from a damaged network
    (``backend.models.batchnorm``). Deterministic: the first images in folder order, first view.
    """
    import itertools

    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    views = (batch["view1"] for batch in itertools.islice(loader, cfg.model.bn_reestimate_batches))
    seen = reestimate_batchnorm(module.online_backbone, views)
    module.target_backbone.load_state_dict(module.online_backbone.state_dict())
    log.info("BatchNorm statistics of the start weights re-estimated on %d BYOL views", seen)
    return seen


def pretrain(cfg: ByolConfig, callbacks: list[Any] | None = None) -> PretrainResult:
    """Run (or resume) BYOL pretraining and export the online backbone.

    Args:
        cfg: The resolved config.
        callbacks: Extra Lightning callbacks (run after the checkpoint and monitor callbacks).

    Returns:
        The run folder, ``last.ckpt``, the export and what the monitor caught.

    Raises:
        ConfigError: Bad folders, too few images, or a resume that does not fit.
        NonFiniteTrainingError: With ``monitor.on_nonfinite=raise``.
    """
    import lightning as L
    from torch.utils.data import DataLoader


    run_dir, resume_ckpt = resolve_run_dir(cfg)
    if resume_ckpt is not None:
        check_resume_config(cfg, run_dir)
    # A resumed run's checkpoint replaces the start weights: never read (or download) them again.
    build_cfg = cfg if resume_ckpt is None else replace(cfg, model=cfg.model.without_start_weights())
    set_backbone_normalisation(build_cfg)  # shares cfg's data section: fills cfg.data.mean/std too
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the DDP workers Lightning launches
    L.seed_everything(cfg.seed, workers=True)

    # A resumed run learns from exactly the images it started with, even if the folders changed since.
    dataset = UnlabelledImageDataset.from_config(cfg.data, seed=cfg.seed,
                                                 paths=_run_images(run_dir) if resume_ckpt is not None else None)
    if len(dataset) < cfg.data.batch_size:
        raise ConfigError(f"only {len(dataset)} images under {cfg.data.dirs}: fewer than data.batch_size "
                          f"({cfg.data.batch_size}); lower --batch_size")
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                        **augmentation_loader_options(dataset, cfg.data.num_workers))
    module = BYOLModule(to_dict(cfg), load_start_weights=resume_ckpt is None)
    if resume_ckpt is None and cfg.model.bn_reestimate_batches > 0 and (cfg.model.pretrained_path
                                                                         or cfg.model.pretrained):
        reestimate_start_batchnorm(module, dataset, cfg)
    own: list[Any] = [_last_checkpoint_callback(cfg.trainer.checkpoint_every_n_steps, run_dir / "ckpts")]
    monitor = None
    if cfg.monitor.enabled:
        monitor = GradWeightMonitor(cfg.monitor.log_every_n_steps, cfg.monitor.histogram_every_n_steps,
                                    cfg.monitor.on_nonfinite, dump_dir=run_dir / "dumps")
        own.append(monitor)
    metrics_csv = run_dir / "metrics.csv"
    if resume_ckpt is not None and metrics_csv.is_file() and os.environ.get("LOCAL_RANK", "0") == "0":
        # Lightning's CSVLogger deletes an existing metrics.csv: keep the earlier part of the curves.
        part = len(list(run_dir.glob("metrics.part*.csv")))
        os.replace(metrics_csv, run_dir / f"metrics.part{part}.csv")
    trainer = build_trainer(cfg, run_dir, [*own, *(callbacks or [])])
    if trainer.is_global_zero and resume_ckpt is None:  # a resumed run keeps the record it started with
        (run_dir / "ckpts").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "images.txt").write_text("\n".join(dataset.paths) + "\n", encoding="utf-8")
    log.info("BYOL: %d images, run folder %s%s", len(dataset), run_dir,
             f", resuming {resume_ckpt}" if resume_ckpt else "")
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume_ckpt) if resume_ckpt else None)

    events = list(monitor.events) if monitor else []
    export = None
    if trainer.is_global_zero:
        meta = export_metadata(cfg, trainer.global_step, epoch=trainer.current_epoch,
                               stopped_nonfinite=bool(events))
        export = export_backbone(module.online_backbone, run_dir / cfg.export_name, meta)
        log.info("exported the online backbone to %s", export)
    last = run_dir / "ckpts" / "last.ckpt"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return PretrainResult(run_dir, last if last.is_file() else None, export, int(trainer.global_step), metrics, events)
