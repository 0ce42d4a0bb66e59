"""Supervised multi-task LightningModule: diagnosis, benign/malignant and Breslow thickness.

The network is built outside and passed in (lightning-hydra-template style), so the same module
trains any registered backbone. One :meth:`LesionModule.model_step` serves train, validation and
test. Everything needed to rebuild the model and its preprocessing from the checkpoint alone
(the resolved experiment config, class weights, thickness scaler, metadata encoder and eval
preprocessing) is stored as plain-data hyper-parameters, so checkpoints load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from backend.config import from_dict
from backend.data.schema import DIAGNOSES, MELANOMA_INDEX
from backend.errors import ConfigError
from backend.metrics.collection import build_auxiliary_metrics, build_classification_metrics, updated_on_any_rank
from backend.metrics.plots import confusion_matrix_image
from backend.models.heads import ThicknessScaler
from backend.models.lesion_net import malignant_log_prob
from backend.training.config import ExperimentConfig
from backend.training.losses import (
    DiagnosisLoss,
    interval_thickness_loss,
    logit_adjustment_offsets,
    malignancy_loss,
)
from backend.training.schedules import keep_configured_schedules, warmup_cosine


class LesionModule(L.LightningModule):
    """Trains a :class:`backend.models.lesion_net.LesionNet` with the multi-task loss.

    Loss = ``alpha`` * class-weighted cross-entropy over the 8 diagnoses (rows with a diagnosis)
    + ``beta`` * interval thickness loss (melanomas with a thickness label)
    + ``gamma`` * binary cross-entropy of the derived malignant probability (rows with a label).

    Args:
        net: The network; not saved as a hyper-parameter (its config is).
        config: Resolved :class:`ExperimentConfig` as a plain dict.
        class_weights: Per-diagnosis cross-entropy weights from the train split, or None.
        thickness_scaler: :class:`ThicknessScaler` as a dict (normalisation of thickness targets).
        metadata_encoder: The datamodule's metadata encoder as a dict, or None without metadata.
        preprocessing: The eval transform description (``backend.data.transforms.preprocessing_dict``).
        class_priors: The train split's diagnosis frequencies, for ``loss.logit_adjustment``.
    """

    def __init__(
        self,
        net: nn.Module,
        config: dict[str, Any],
        class_weights: list[float] | None = None,
        thickness_scaler: dict[str, float] | None = None,
        metadata_encoder: dict[str, Any] | None = None,
        preprocessing: dict[str, Any] | None = None,
        class_priors: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.hparams["classes"] = list(DIAGNOSES)
        self.net = net
        self.cfg = from_dict(ExperimentConfig, config)
        weights = None
        if class_weights is not None and self.cfg.loss.class_weighted:
            weights = torch.tensor(class_weights, dtype=torch.float32)
        offsets = None
        if self.cfg.loss.logit_adjustment > 0:
            if class_priors is None:
                raise ConfigError(f"loss.logit_adjustment ({self.cfg.loss.logit_adjustment}) needs the train split's "
                                  "class priors (class_priors)")
            offsets = logit_adjustment_offsets(class_priors, self.cfg.loss.logit_adjustment)
        self.diagnosis_loss = DiagnosisLoss(weights, label_smoothing=self.cfg.loss.label_smoothing,
                                            logit_offsets=offsets)
        self.thickness_scaler = ThicknessScaler.from_dict(thickness_scaler or ThicknessScaler().to_dict())
        metrics = build_classification_metrics(len(DIAGNOSES))
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_extra = build_auxiliary_metrics("val/")
        self.test_extra = build_auxiliary_metrics("test/")

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None):
        """Run the network; returns its :class:`LesionOutput`."""
        return self.net(images, meta)

    def model_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward one batch and compute every loss term; shared by train, val and test."""
        out = self.net(batch["image"], batch.get("meta"))
        logits = out.diagnosis_logits
        diagnosis = batch["diagnosis"]
        loss_cfg = self.cfg.loss

        loss_diag = self.diagnosis_loss(logits, diagnosis) if bool((diagnosis >= 0).any()) else logits.sum() * 0.0
        loss_mal = malignancy_loss(logits, batch["label"])

        is_mel = diagnosis == MELANOMA_INDEX
        lo = torch.where(is_mel, batch["thickness_lo"], torch.full_like(batch["thickness_lo"], math.nan))
        hi = torch.where(is_mel, batch["thickness_hi"], torch.full_like(batch["thickness_hi"], math.nan))
        loss_thick = interval_thickness_loss(
            out.thickness,
            self.thickness_scaler.normalise(lo),
            self.thickness_scaler.normalise(hi),
            kind=loss_cfg.thickness_loss,
        )
        loss = loss_cfg.alpha * loss_diag + loss_cfg.beta * loss_thick + loss_cfg.gamma * loss_mal
        return {
            "loss": loss,
            "loss_diagnosis": loss_diag.detach(),
            "loss_thickness": loss_thick.detach(),
            "loss_malignant": loss_mal.detach(),
            "logits": logits.detach(),
            "thickness": out.thickness.detach(),
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step; logs every loss term."""
        step = self.model_step(batch)
        batch_size = batch["image"].shape[0]
        for key in ("loss", "loss_diagnosis", "loss_thickness", "loss_malignant"):
            self.log(f"train/{key}", step[key], batch_size=batch_size, prog_bar=key == "loss")
        return step["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        step = self.model_step(batch)
        # Rows with no target at all (an unreadable image, left out of the figures) weigh nothing in the loss.
        label = batch["label"].reshape(-1)
        scored = int(((batch["diagnosis"] >= 0) | (label == 0) | (label == 1)).sum())
        if scored:
            self.log(f"{stage}/loss", step["loss"], batch_size=scored, sync_dist=True, prog_bar=True)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        extra = self.val_extra if stage == "val" else self.test_extra
        logits, diagnosis = step["logits"].float(), batch["diagnosis"]
        known = diagnosis >= 0
        if bool(known.any()):
            metrics.update(logits[known].softmax(dim=1), diagnosis[known])
        extra["auroc_malignant"].update(malignant_log_prob(logits).exp(), batch["label"])
        exact = (batch["thickness_lo"] == batch["thickness_hi"]) & (diagnosis == MELANOMA_INDEX)
        if bool(exact.any()):
            pred_mm = self.thickness_scaler.denormalise(step["thickness"][exact].float())
            extra["thickness_mae_mm"].update(pred_mm, batch["thickness_lo"][exact])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulate validation metrics."""
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulate test metrics."""
        self._eval_step(batch, "test")

    def _log_epoch(self, metrics: MetricCollection, extra: MetricCollection) -> None:
        values: dict[str, torch.Tensor] = {}
        for collection in (metrics, extra):
            items = list(collection.items(keep_base=False, copy_state=False))
            for (name, metric), updated in zip(items, updated_on_any_rank([m for _, m in items]), strict=True):
                if not updated:
                    continue  # e.g. no exact thickness label in this split, on any process
                with warnings.catch_warnings():  # a process whose shard had none joins with an empty state
                    warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                    value = metric.compute()
                if value.numel() == 1:
                    values[name] = value.float()
                else:
                    self._log_tensor_metric(name, value)
            collection.reset()
        if values:
            self.log_dict(values, sync_dist=False)

    def _log_tensor_metric(self, name: str, value: torch.Tensor) -> None:
        """Log per-class vectors as scalars and confusion matrices as TensorBoard images."""
        if value.ndim == 1 and value.numel() == len(DIAGNOSES):
            self.log_dict({f"{name}/{cls}": v.float() for cls, v in zip(DIAGNOSES, value, strict=True)})
        elif value.ndim == 2 and self.logger is not None and self.trainer.is_global_zero:
            experiment = getattr(self.logger, "experiment", None)
            if hasattr(experiment, "add_image"):

                experiment.add_image(
                    name, confusion_matrix_image(value.cpu().numpy(), DIAGNOSES), self.global_step, dataformats="HWC"
                )

    def on_validation_epoch_end(self) -> None:
        """Compute, log and reset the validation metrics."""
        self._log_epoch(self.val_metrics, self.val_extra)

    def on_test_epoch_end(self) -> None:
        """Compute, log and reset the test metrics."""
        self._log_epoch(self.test_metrics, self.test_extra)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run follows the LR schedule of its own config (e.g. more epochs), from the saved step."""
        keep_configured_schedules(checkpoint)

    def on_train_epoch_start(self) -> None:
        """Stage 1 (backbone frozen) for ``freeze_epochs`` epochs, then full fine-tuning."""
        self.net.freeze_backbone(self.current_epoch < self.cfg.optim.freeze_epochs)

    def _steps_per_epoch(self, total_steps: int) -> float:
        """Optimiser steps in one epoch: from the loader's batches, else the run's steps over its epochs.

        ``estimated_stepping_batches`` is capped by ``trainer.max_steps``; dividing it by the epochs
        would then put the warm-up and the unfreeze step far too early.
        """
        trainer = self.trainer
        batches = getattr(trainer, "num_training_batches", math.inf)
        if isinstance(batches, int | float) and math.isfinite(batches) and batches > 0:
            return max(1.0, math.ceil(batches / max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))))
        return total_steps / max(1, trainer.max_epochs or 1)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over layer-wise-decayed parameter groups, linear warm-up then cosine, per step.

        With ``optim.freeze_epochs``, the backbone's groups warm up from the step they are unfrozen at.
        """
        optim = self.cfg.optim
        groups = self.net.param_groups(lr=optim.lr, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = self._steps_per_epoch(total_steps)
        warmup_steps = min(total_steps - 1, round(optim.warmup_epochs * steps_per_epoch))
        # A frozen backbone warms up from the step it is unfrozen at, not from step 0.
        unfreeze_step = min(total_steps, round(optim.freeze_epochs * steps_per_epoch))
        starts = [unfreeze_step if group["name"].startswith("backbone.") else 0 for group in groups]
        scheduler = warmup_cosine(optimizer, max(0, warmup_steps), total_steps, min_lr_ratio=optim.min_lr_ratio,
                                  group_starts=starts)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
