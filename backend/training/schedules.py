"""Learning-rate and EMA-momentum schedules.

:func:`warmup_cosine` is a ``LambdaLR`` multiplier, so each parameter group keeps its own base
LR (layer-wise LR decay survives) and only the shared factor changes per optimiser step. The
multiplier is a small callable object rather than a lambda: ``LambdaLR.state_dict`` then stores
its plain-number attributes, so the schedule resumes from a checkpoint loaded with
``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from backend.errors import ConfigError

if TYPE_CHECKING:
    import torch


class WarmupCosineFactor:
    """LR multiplier: linear warm-up to 1, then half-cosine down to ``min_lr_ratio``.

    Step ``s`` (0-based, the optimiser step about to run) gets ``(s + 1) / (warmup_steps + 1)``
    during warm-up (never 0, so no step is wasted), 1 at ``s = warmup_steps``, and
    ``min_lr_ratio`` at the last step ``total_steps - 1`` and after.

    A group that starts training late (a backbone frozen for the first epochs) gets
    ``start_step``: 0 before it, then its own linear warm-up of ``warmup_steps`` from there,
    multiplied onto the shared cosine. Otherwise the warm-up would pass while the backbone is
    frozen and its pretrained weights would meet the peak LR on their first step.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0, start_step: int = 0) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.start_step = int(start_step)

    def __call__(self, step: int) -> float:
        """The multiplier at optimiser step ``step``."""
        if step < self.start_step:
            return 0.0
        since = step - self.start_step
        ramp = (since + 1) / (self.warmup_steps + 1) if since < self.warmup_steps else 1.0
        if step < self.warmup_steps:
            return ramp
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        decay = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return ramp * decay


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
    group_starts: Sequence[int] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up then cosine decay, scaling every parameter group's own LR.

    Call ``scheduler.step()`` after every optimiser step (Lightning: ``"interval": "step"``).

    Args:
        optimizer: The optimiser; each group's ``lr`` at construction is its peak LR.
        warmup_steps: Steps of linear warm-up (0 = start at the peak).
        total_steps: Total optimiser steps of the run (the LR reaches its floor at the last one).
        min_lr_ratio: Final LR as a fraction of each group's peak, in [0, 1].
        group_starts: Per parameter group, the step it starts training at (0 for all by default);
            a late group warms up from there (:class:`WarmupCosineFactor`).

    Raises:
        ConfigError: On ``total_steps < 1``, ``warmup_steps`` outside ``[0, total_steps]``,
            ``min_lr_ratio`` outside [0, 1], or ``group_starts`` not one step >= 0 per group.
    """
    from torch.optim.lr_scheduler import LambdaLR

    if total_steps < 1:
        raise ConfigError(f"LR schedule: total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"LR schedule: warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"LR schedule: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if group_starts is None:
        return LambdaLR(optimizer, WarmupCosineFactor(warmup_steps, total_steps, min_lr_ratio))
    starts = list(group_starts)
    if len(starts) != len(optimizer.param_groups) or any(int(start) != start or start < 0 for start in starts):
        raise ConfigError(f"LR schedule: group_starts must be one whole step >= 0 for each of the "
                          f"{len(optimizer.param_groups)} parameter groups, got {starts}")
    return LambdaLR(optimizer, [WarmupCosineFactor(warmup_steps, total_steps, min_lr_ratio, int(start))
                                for start in starts])


def cosine_momentum(step: int, total: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA momentum for BYOL's target network: cosine from ``base`` at step 0 to ``final``.

    Delegates to ``lightly.utils.scheduler.cosine_schedule``, which reaches ``final`` at step
    ``total - 1`` and stays there.

    Args:
        step: Current optimiser step (>= 0).
        total: Total optimiser steps of the run.
        base: Momentum at step 0.
        final: Momentum at the end (1 = target frozen).
    """
    import warnings

    from lightly.utils.scheduler import cosine_schedule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # lightly warns once past total; we clamp
        return cosine_schedule(step, total, base, final)


def keep_configured_schedules(checkpoint: dict[str, Any]) -> None:
    """Let a resumed run follow the schedule its config builds, not the one saved in its checkpoint.

    ``LambdaLR.load_state_dict`` copies the saved multiplier's attributes (``total_steps``...) over
    the new one, so a run resumed with more epochs would spend every extra epoch at the floor LR.
    Dropping the saved multipliers keeps the scheduler's step count and uses the schedule of the
    resumed run's own ``trainer.max_epochs``. Call from ``LightningModule.on_load_checkpoint``.
    """
    for state in checkpoint.get("lr_schedulers") or []:
        if isinstance(state, dict) and "lr_lambdas" in state:
            state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
