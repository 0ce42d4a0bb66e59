"""Warm-up + cosine LR schedule and the BYOL EMA momentum schedule."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.errors import ConfigError
from backend.training.schedules import WarmupCosineFactor, cosine_momentum, warmup_cosine
from backend.training.supervised import LesionModule
from tests.models.test_lesion_net import tiny_net


def make_optimizer(lrs=(1e-3, 1e-3 * 0.75**3)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.AdamW(groups)


def lr_trace(scheduler, optimizer, steps: int) -> np.ndarray:
    """LR of every group at each optimiser step, as Lightning's per-step interval produces it."""
    trace = []
    for _ in range(steps):
        trace.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return np.array(trace)


def test_values_at_start_end_of_warmup_and_end():
    opt = make_optimizer((1.0,))
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    lr = lr_trace(sched, opt, 25)[:, 0]
    assert lr[0] == pytest.approx(1 / 5)  # (0 + 1) / (4 + 1): never 0, no wasted step
    assert lr[3] == pytest.approx(4 / 5)  # last warm-up step
    assert lr[4] == pytest.approx(1.0)  # peak right after warm-up
    assert lr[19] == pytest.approx(0.1)  # floor at the last step
    assert lr[24] == pytest.approx(0.1)  # and it stays there (e.g. one extra scheduler step)
    # halfway through the cosine: mid-point between peak and floor
    mid = 4 + (19 - 4) / 2
    assert WarmupCosineFactor(4, 20, 0.1)(mid) == pytest.approx(0.55)


def test_monotonic_up_then_down():
    opt = make_optimizer((1.0,))
    lr = lr_trace(warmup_cosine(opt, 10, 100), opt, 100)[:, 0]
    assert np.all(np.diff(lr[:11]) > 0)
    assert np.all(np.diff(lr[10:]) < 0)
    assert lr[-1] == pytest.approx(0.0)
    assert lr.max() == pytest.approx(1.0)


def test_each_group_keeps_its_own_base_lr():
    base = (1e-3, 1e-3 * 0.75, 1e-3 * 0.75**4)
    opt = make_optimizer(base)
    trace = lr_trace(warmup_cosine(opt, 5, 50, min_lr_ratio=0.01), opt, 50)
    ratios = trace / np.array(base)
    np.testing.assert_allclose(ratios, ratios[:, :1].repeat(3, axis=1), rtol=1e-9)
    assert trace[5] == pytest.approx(base)
    assert trace[-1] == pytest.approx([0.01 * b for b in base])


def test_no_warmup_starts_at_peak():
    opt = make_optimizer((2.0,))
    lr = lr_trace(warmup_cosine(opt, 0, 10), opt, 10)[:, 0]
    assert lr[0] == pytest.approx(2.0) and lr[-1] == pytest.approx(0.0)


def test_state_dict_round_trips_with_weights_only():
    opt = make_optimizer((1.0,))
    sched = warmup_cosine(opt, 3, 30, min_lr_ratio=0.05)
    lr_trace(sched, opt, 7)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = make_optimizer((1.0,))
    sched2 = warmup_cosine(opt2, 1, 2)  # different settings: the checkpoint restores them
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0].total_steps == 30 and sched2.lr_lambdas[0].min_lr_ratio == 0.05
    assert sched2.last_epoch == sched.last_epoch


@pytest.mark.parametrize(
    ("warmup", "total", "ratio", "message"),
    [(0, 0, 0.0, "total_steps"), (-1, 10, 0.0, "warmup_steps"), (11, 10, 0.0, "warmup_steps"), (1, 10, 1.5, "min_lr")],
)
def test_bad_schedule_arguments(warmup, total, ratio, message):
    with pytest.raises(ConfigError, match=message):
        warmup_cosine(make_optimizer(), warmup, total, ratio)


def test_cosine_momentum():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(99, 100) == pytest.approx(1.0)
    assert cosine_momentum(150, 100) == pytest.approx(1.0)
    # halfway (lightly spreads the half cosine over total - 1 steps)
    assert cosine_momentum(50, 101) == pytest.approx(0.998)
    values = [cosine_momentum(s, 100, base=0.99, final=1.0) for s in range(100)]
    assert np.all(np.diff(values) >= 0)
    expected = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * 10 / 99) + 1) / 2
    assert values[10] == pytest.approx(expected)
    assert isinstance(values[10], float)


def test_a_late_group_is_idle_then_warms_up_from_its_own_start():
    opt = make_optimizer((1.0, 1.0))
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=40, min_lr_ratio=0.1, group_starts=[0, 10])
    trace = lr_trace(sched, opt, 40)
    plain = [WarmupCosineFactor(4, 40, 0.1)(s) for s in range(40)]
    np.testing.assert_allclose(trace[:, 0], plain)  # a group starting at 0 keeps the plain schedule
    late = trace[:, 1]
    assert np.all(late[:10] == 0.0)  # nothing while frozen
    for since in range(4):  # its own ramp from the start, on top of the shared cosine
        assert late[10 + since] == pytest.approx(plain[10 + since] * (since + 1) / 5)
    np.testing.assert_allclose(late[14:], plain[14:])  # then the shared cosine
    assert late[10] < 0.25 * plain[10]  # the first unfrozen step is far below the peak


@pytest.mark.parametrize("starts", [[0], [0, -1], [0, 1.5]])
def test_group_starts_must_be_one_whole_step_per_group(starts):
    with pytest.raises(ConfigError, match="group_starts"):
        warmup_cosine(make_optimizer((1.0, 1.0)), 2, 10, group_starts=starts)


def test_a_frozen_backbone_warms_up_after_it_is_unfrozen():
    module = LesionModule(tiny_net(), config={"optim": {"freeze_epochs": 1, "warmup_epochs": 1}})
    module._trainer = SimpleNamespace(estimated_stepping_batches=40, max_epochs=4)  # 10 steps per epoch
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    names = [group["name"] for group in scheduler.optimizer.param_groups]
    starts = {name: factor.start_step for name, factor in zip(names, scheduler.lr_lambdas, strict=True)}
    assert {start for name, start in starts.items() if name.startswith("backbone.")} == {10}
    assert {start for name, start in starts.items() if not name.startswith("backbone.")} == {0}
    unfrozen = LesionModule(tiny_net(), config={"optim": {"freeze_epochs": 0}})
    unfrozen._trainer = SimpleNamespace(estimated_stepping_batches=40, max_epochs=4)
    factors = unfrozen.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas
    assert {factor.start_step for factor in factors} == {0}


def test_a_run_cut_short_by_max_steps_counts_epochs_in_the_loader_s_steps():
    module = LesionModule(tiny_net(), config={"optim": {"freeze_epochs": 2, "warmup_epochs": 1}})
    # 10 batches per epoch, 10 epochs, but trainer.max_steps = 30 caps the estimate at 30.
    module._trainer = SimpleNamespace(estimated_stepping_batches=30, max_epochs=10, num_training_batches=10,
                                      accumulate_grad_batches=1)
    factors = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas
    assert {factor.start_step for factor in factors} == {0, 20}  # after 2 epochs of 10 steps, not of 3
    assert {factor.warmup_steps for factor in factors} == {10}
    module._trainer.accumulate_grad_batches = 4  # 10 batches are 3 optimiser steps
    factors = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas
    assert {factor.start_step for factor in factors} == {0, 6}
