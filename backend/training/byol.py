"""BYOL (Grill et al., 2020) as a LightningModule assembled from lightly's parts.

* Online network: backbone (any registered one, built like the supervised model's) + lightly's
  ``BYOLProjectionHead`` + ``BYOLPredictionHead``. Only these parameters reach the optimiser.
* Target network: a copy of the online backbone and projector that is never optimised and runs
  without gradients. After every optimiser step it becomes the exponential moving average of the
  online network, **buffers included**: floating buffers (BatchNorm running mean/var) are averaged
  like the weights, integer buffers (``num_batches_tracked``) are copied. The momentum rises on a
  cosine from ``optim.base_momentum`` (0.996) to ``optim.final_momentum`` (1.0) over the run.
  The target normalises with batch statistics (train mode, as in BYOL) but its own forward passes
  never update its running statistics: they stay the EMA of the online ones, so the exported or
  eval-mode target is a consistent network.
* Loss: lightly's ``NegativeCosineSimilarity``, symmetric: the prediction of view 1 against the
  target projection of view 2, plus view 2 against view 1, halved.
* Weight decay: never on GeM's ``p``, norms, biases (every parameter with ``ndim <= 1``) or the
  backbone's own ``no_weight_decay_params()`` (ViT tokens).

The views come from :func:`backend.data.transforms.build_byol_transforms` (strong and asymmetric),
never from the supervised augmentations.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
from torch import nn

from backend.config import to_dict
from backend.models.config import ModelConfig
from backend.models.lesion_net import backbone_kwargs
from backend.models.registry import Backbone, create_backbone
from backend.training.byol_config import ByolConfig, byol_config_from
from backend.training.schedules import cosine_momentum, keep_configured_schedules, warmup_cosine


def build_backbone(cfg: ModelConfig, img_size: int) -> Backbone:
    """The backbone the supervised model would get for this model section at ``img_size`` (same keys, same init)."""
    return create_backbone(cfg.backbone, pretrained_path=cfg.pretrained_path, pretrained_prefix=cfg.pretrained_prefix,
                           **backbone_kwargs(cfg, img_size))


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters and floating buffers.

    Parameters go through lightly's ``update_momentum``; integer buffers are copied.

    Raises:
        ValueError: When the two modules do not have the same parameter and buffer names.
    """
    from lightly.models.utils import update_momentum

    online_buffers, target_buffers = dict(online.named_buffers()), dict(target.named_buffers())
    online_names = [n for n, _ in online.named_parameters()]
    if online_names != [n for n, _ in target.named_parameters()] or online_buffers.keys() != target_buffers.keys():
        raise ValueError("EMA target and online network have different parameters or buffers")
    update_momentum(online, target, m=momentum)
    for name, buf in target_buffers.items():
        if buf.dtype.is_floating_point:
            buf.mul_(momentum).add_(online_buffers[name].to(buf.dtype), alpha=1.0 - momentum)
        else:
            buf.copy_(online_buffers[name])


def freeze_running_stats(module: nn.Module) -> None:
    """Keep every norm layer of ``module`` from updating its running statistics in its forward pass.

    In train mode the layers still normalise with batch statistics; in eval mode they use their
    (EMA-maintained) running statistics.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._NormBase) and layer.running_mean is not None:
            layer.track_running_stats = False


class BYOLModule(L.LightningModule):
    """BYOL pretraining of a registered backbone (see the module docstring).

    Args:
        config: The resolved :class:`ByolConfig` as a plain dict (saved in every checkpoint).
        load_start_weights: Read the config's start weights into the backbone; False for a resumed
            run, whose checkpoint holds every weight (the config still records where it started).
    """

    def __init__(self, config: dict[str, Any], load_start_weights: bool = True) -> None:
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.cfg: ByolConfig = byol_config_from(config)
        self.save_hyperparameters({"config": to_dict(self.cfg)})
        m = self.cfg.model
        self.online_backbone = build_backbone(m if load_start_weights else m.without_start_weights(),
                                              self.cfg.data.img_size)
        self.online_projector = BYOLProjectionHead(self.online_backbone.feat_dim, m.proj_hidden_dim, m.proj_dim)
        self.predictor = BYOLPredictionHead(m.proj_dim, m.pred_hidden_dim, m.proj_dim)
        self.target_backbone = copy.deepcopy(self.online_backbone)
        self.target_projector = copy.deepcopy(self.online_projector)
        for target in (self.target_backbone, self.target_projector):
            deactivate_requires_grad(target)
            freeze_running_stats(target)
        self.criterion = NegativeCosineSimilarity()
        self.momentum = self.cfg.optim.base_momentum
        self._total_steps = 1

    # -- networks ------------------------------------------------------------------------------

    def online_modules(self) -> dict[str, nn.Module]:
        """The optimised part: backbone, projector, predictor."""
        return {"online_backbone": self.online_backbone, "online_projector": self.online_projector,
                "predictor": self.predictor}

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs the EMA runs over."""
        return [(self.online_backbone, self.target_backbone), (self.online_projector, self.target_projector)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of the online backbone (what is exported)."""
        return self.online_backbone(images)

    def online_predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection and prediction of the online network."""
        z = self.online_projector(self.online_backbone(images))
        return z, self.predictor(z)

    @torch.no_grad()
    def target_project(self, images: torch.Tensor) -> torch.Tensor:
        """Target projection (no gradient)."""
        return self.target_projector(self.target_backbone(images))

    def byol_loss(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Symmetric BYOL loss of a batch of view pairs, with the collapse indicator.

        Returns:
            ``loss`` (in [-1, 1]; -1 is perfect agreement) and ``z_std``, the per-dimension std of
            the L2-normalised online projections (about ``1/sqrt(proj_dim)`` when healthy, 0 when
            every image maps to the same point).
        """
        from lightly.utils.debug import std_of_l2_normalized

        z1, p1 = self.online_predict(view1)
        _, p2 = self.online_predict(view2)
        t1, t2 = self.target_project(view1), self.target_project(view2)
        loss = 0.5 * (self.criterion(p1, t2) + self.criterion(p2, t1))
        return {"loss": loss, "z_std": std_of_l2_normalized(z1.detach())}

    # -- Lightning hooks -----------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One BYOL step on ``batch["view1"]`` / ``batch["view2"]``."""
        out = self.byol_loss(batch["view1"], batch["view2"])
        n = batch["view1"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("train/z_std", out["z_std"], batch_size=n)
        # The momentum this step's target update uses (after a resume too, from the first step on).
        self.log("train/momentum", self.scheduled_momentum(self.trainer.global_step), batch_size=n)
        return out["loss"]

    def scheduled_momentum(self, step: int) -> float:
        """The EMA momentum of optimiser step ``step`` on the run's cosine schedule."""
        o = self.cfg.optim
        return cosine_momentum(step, self._total_steps, o.base_momentum, o.final_momentum)

    @torch.no_grad()
    def update_target(self, step: int) -> float:
        """EMA update of the target with the momentum scheduled for optimiser step ``step``."""
        self.momentum = self.scheduled_momentum(step)
        for online, target in self.target_pairs():
            ema_update(online, target, self.momentum)
        return self.momentum

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Run the optimiser step, then move the target toward the updated online network."""
        step = self.trainer.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.update_target(step)

    def param_groups(self) -> list[dict[str, Any]]:
        """Two groups over the online network: decayed weights, and the rest with ``weight_decay=0``.

        No decay for every parameter with ``ndim <= 1`` (GeM ``p``, norm scales/shifts, biases) and
        for the backbone's ``no_weight_decay_params()``. The target is in neither group.
        """
        exempt = {f"online_backbone.{n}" for n in self.online_backbone.no_weight_decay_params()}
        decay, no_decay = [], []
        for prefix, module in self.online_modules().items():
            for name, param in module.named_parameters(prefix=prefix):
                (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
        wd = self.cfg.optim.weight_decay
        return [{"name": "decay", "params": decay, "weight_decay": wd},
                {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run follows the LR schedule of its own config (e.g. more epochs), from the saved step."""
        keep_configured_schedules(checkpoint)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (or SGD) over :meth:`param_groups`, per-step linear warm-up then cosine decay."""
        o = self.cfg.optim
        if o.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.param_groups(), lr=o.lr, momentum=o.sgd_momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(self.param_groups(), lr=o.lr, betas=tuple(o.betas))
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        batches = float(self.trainer.num_training_batches)  # known once the estimate has set up the loader
        if math.isfinite(batches) and batches > 0:
            steps_per_epoch = batches / self.trainer.accumulate_grad_batches
        else:
            steps_per_epoch = self._total_steps / max(1, self.trainer.max_epochs or 1)
        warmup = min(self._total_steps - 1, round(o.warmup_epochs * steps_per_epoch))
        scheduler = warmup_cosine(optimizer, max(0, warmup), self._total_steps, min_lr_ratio=o.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
