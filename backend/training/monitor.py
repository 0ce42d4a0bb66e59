"""``GradWeightMonitor``: gradient/weight norms and histograms, and a guard against NaN/inf training.

What it logs (to every logger, at its own interval, under ``monitor/``): the global gradient and
weight norms and the same per top-level submodule (``online_backbone``, ``predictor``...), plus
TensorBoard histograms of every trainable weight and its gradient every ``histogram_every_n_steps``.

What it guards: a non-finite loss (checked before each backward) or gradient (checked before each
optimiser step, after AMP unscaling). It then writes a dump of the state (step, epoch, loss, the
names of the non-finite gradients and weights, every gradient, the model's state dict and the batch)
that loads with ``torch.load(..., weights_only=True)``, drops the gradients so the pending
optimiser step changes nothing, and by default stops training: the weights and ``last.ckpt`` stay
finite, and the dump shows where things went wrong. Under fp16 loss scaling, non-finite gradients
are the scaler's business (it skips those steps by design); only a non-finite loss counts there.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from backend.errors import ConfigError, DermaLensError

log = logging.getLogger(__name__)

ACTIONS = ("stop", "raise", "skip")


class NonFiniteTrainingError(DermaLensError, FloatingPointError):
    """Training produced a NaN/inf loss or gradient (raised when ``on_nonfinite="raise"``)."""


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a (nested) batch as a flat ``name -> tensor`` dict on the CPU."""
    if isinstance(obj, torch.Tensor):
        return {prefix or "batch": obj.detach().cpu().clone()}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


class GradWeightMonitor(Callback):
    """Log gradient and weight norms, histogram them, and stop cleanly on a non-finite loss or gradient.

    Args:
        log_every_n_steps: Norm logging interval in optimiser steps (0 = the trainer's ``log_every_n_steps``).
        histogram_every_n_steps: Histogram interval (0 = never); needs a logger with ``add_histogram``
            (TensorBoard).
        on_nonfinite: ``stop`` (dump, skip the step, stop training), ``raise`` (dump, raise
            :class:`NonFiniteTrainingError`) or ``skip`` (dump, skip the step, continue).
        dump_dir: Folder of the dumps (default: ``<trainer.default_root_dir>/dumps``).
        dump_batch: Include the offending batch in the dump.

    Attributes:
        events: One dict per non-finite event (``step``, ``epoch``, ``loss``, ``nonfinite_grads``,
            ``nonfinite_params``, ``dump``).
    """

    def __init__(
        self,
        log_every_n_steps: int = 0,
        histogram_every_n_steps: int = 0,
        on_nonfinite: str = "stop",
        dump_dir: str | Path | None = None,
        dump_batch: bool = True,
    ) -> None:
        if on_nonfinite not in ACTIONS:
            raise ConfigError(f"on_nonfinite must be one of {list(ACTIONS)}, got {on_nonfinite!r}")
        if log_every_n_steps < 0 or histogram_every_n_steps < 0:
            raise ConfigError("GradWeightMonitor intervals must be >= 0")
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.on_nonfinite = on_nonfinite
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.dump_batch = dump_batch
        self.events: list[dict[str, Any]] = []
        self._batch: Any = None
        self._bad_loss: float | None = None

    # -- hooks ---------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Remember the batch for a possible dump."""
        self._batch = batch if self.dump_batch else None

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        """Flag a non-finite loss (handled at the next optimiser step, accumulation included)."""
        if self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().reshape(-1)[0])

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Check the gradients, then log norms and histograms when due."""
        named = [(n, p) for n, p in pl_module.named_parameters() if p.grad is not None]
        norms = list(torch._foreach_norm([p.grad.detach() for _, p in named])) if named else []
        total = torch.linalg.vector_norm(torch.stack(norms).float()) if norms else torch.zeros(())
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        if self._bad_loss is not None or (not scaled and not bool(torch.isfinite(total))):
            self._handle_nonfinite(trainer, pl_module, optimizer, named, norms)
            return
        step = trainer.global_step
        interval = self.log_every_n_steps or trainer.log_every_n_steps
        if interval and step % interval == 0:
            self._log_norms(trainer, pl_module, named, norms, total)
        if self.histogram_every_n_steps and step % self.histogram_every_n_steps == 0:
            self._log_histograms(trainer, named)

    # -- logging -------------------------------------------------------------------------------

    def _log_norms(self, trainer: Any, pl_module: Any, named: list, norms: list, total: torch.Tensor) -> None:
        grad_sq: dict[str, float] = {}
        for (name, _), norm in zip(named, norms, strict=True):
            group = name.split(".", 1)[0]
            grad_sq[group] = grad_sq.get(group, 0.0) + float(norm) ** 2
        weight_sq: dict[str, float] = {}
        for name, param in pl_module.named_parameters():
            if param.requires_grad:
                group = name.split(".", 1)[0]
                weight_sq[group] = weight_sq.get(group, 0.0) + float(param.detach().float().pow(2).sum())
        metrics = {"monitor/grad_norm/total": float(total),
                   "monitor/weight_norm/total": math.sqrt(sum(weight_sq.values()))}
        metrics.update({f"monitor/grad_norm/{g}": math.sqrt(v) for g, v in grad_sq.items()})
        metrics.update({f"monitor/weight_norm/{g}": math.sqrt(v) for g, v in weight_sq.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _log_histograms(self, trainer: Any, named: list) -> None:
        writers = [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_histogram")]
        for writer in writers:
            for name, param in named:
                writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), trainer.global_step)
                writer.add_histogram(f"grads/{name}", param.grad.detach().float().cpu(), trainer.global_step)

    # -- non-finite guard ----------------------------------------------------------------------

    def _handle_nonfinite(self, trainer: Any, pl_module: Any, optimizer: Any, named: list, norms: list) -> None:
        bad_grads = [n for (n, _), norm in zip(named, norms, strict=True) if not bool(torch.isfinite(norm))]
        bad_params = [n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        event: dict[str, Any] = {
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "loss": self._bad_loss if self._bad_loss is not None else math.nan,
            "nonfinite_loss": self._bad_loss is not None,
            "nonfinite_grads": bad_grads,
            "nonfinite_params": bad_params,
            "action": self.on_nonfinite,
        }
        event["dump"] = str(self._write_dump(trainer, pl_module, event, named))
        self.events.append(event)
        self._bad_loss = None
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left alone by the step
        what = "loss" if event["nonfinite_loss"] else f"gradient of {len(bad_grads)} parameters (e.g. {bad_grads[:3]})"
        message = (f"non-finite {what} at step {event['step']} (epoch {event['epoch']}); "
                   f"the optimiser step was skipped and the state dumped to {event['dump']}")
        if self.on_nonfinite == "raise":
            raise NonFiniteTrainingError(message)
        if self.on_nonfinite == "stop":
            trainer.should_stop = True
            message += "; training stops (monitor.on_nonfinite=stop)"
        log.error(message)

    def _write_dump(self, trainer: Any, pl_module: Any, event: dict[str, Any], named: list) -> Path:
        folder = self.dump_dir or Path(trainer.default_root_dir) / "dumps"
        folder.mkdir(parents=True, exist_ok=True)
        rank = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        path = folder / f"nonfinite_step{event['step']:07d}{rank}.pt"
        dump = {
            "event": dict(event),
            "grads": {n: p.grad.detach().cpu().clone() for n, p in named},
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "batch": _tensors(self._batch) if self._batch is not None else {},
        }
        torch.save(dump, path)
        return path
