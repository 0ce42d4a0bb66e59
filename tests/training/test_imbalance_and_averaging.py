"""Training with the logit-adjusted loss and with an exponential moving average of the weights (tiny runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.errors import ConfigError
from backend.files import safe_torch_load
from backend.io.checkpoint import load_lesion_checkpoint
from backend.training.losses import logit_adjustment_offsets
from backend.training.run import fit
from backend.training.supervised import LesionModule
from tests.training.test_run import tiny_cfg

LOGIT_ADJUSTED = {"logit_adjustment": 0.5, "class_weighted": False}
PRIORS = [0.5, 0.3, 0.1, 0.04, 0.03, 0.01, 0.01, 0.01]


def test_module_puts_tau_log_prior_into_its_diagnosis_loss_and_needs_the_priors():
    module = LesionModule(torch.nn.Identity(), config={"loss": LOGIT_ADJUSTED}, class_priors=PRIORS)
    assert torch.allclose(module.diagnosis_loss.logit_offsets, logit_adjustment_offsets(PRIORS, tau=0.5))
    assert module.diagnosis_loss.class_weights is None  # the adjustment replaces the weights
    assert LesionModule(torch.nn.Identity(), config={}, class_priors=PRIORS).diagnosis_loss.logit_offsets is None
    with pytest.raises(ConfigError, match="needs the train split's class priors"):
        LesionModule(torch.nn.Identity(), config={"loss": LOGIT_ADJUSTED})


def test_logit_adjusted_run_trains(dataset, tmp_path):
    """``fit`` hands the train split's priors to the module (without them it would refuse to build)."""
    result = fit(tiny_cfg(dataset, tmp_path, loss=LOGIT_ADJUSTED, trainer={"max_epochs": 1}), test=False)
    assert np.isfinite(result.metrics["train/loss"]) and np.isfinite(result.metrics["val/loss"])
    assert load_lesion_checkpoint(result.best_ckpt).config["loss"]["logit_adjustment"] == 0.5


def test_ema_checkpoints_hold_the_averaged_weights_and_resume(dataset, tmp_path):
    cfg = tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1, "ema_decay": 0.5})
    first = fit(cfg, test=False)
    last = safe_torch_load(first.last_ckpt)
    # Lightning's EMAWeightAveraging: state_dict is the average, the raw weights ride along to resume.
    assert {"current_model_state", "averaging_state"} <= set(last)
    averaged, raw = last["state_dict"], last["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())
    steps = int(last["global_step"])
    assert int(last["averaging_state"]["n_averaged"]) == steps
    # What export and predict load is the averaged network.
    loaded = load_lesion_checkpoint(first.last_ckpt)
    net_state = {f"net.{k}": v for k, v in loaded.net.state_dict().items()}
    assert all(torch.equal(net_state[k], averaged[k]) for k in net_state)

    resumed = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 2, "ema_decay": 0.5}, resume_version=0),
                  test=False)
    again = safe_torch_load(resumed.last_ckpt)
    assert int(again["global_step"]) == 2 * steps
    assert int(again["averaging_state"]["n_averaged"]) == 2 * steps  # the average went on, not restarted


def test_without_ema_the_checkpoint_has_no_average(dataset, tmp_path):
    plain = safe_torch_load(fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1}), test=False).last_ckpt)
    assert "current_model_state" not in plain and "averaging_state" not in plain


def test_the_test_split_is_scored_with_the_averaged_weights_validation_chose(dataset, tmp_path, monkeypatch):
    tested = []
    monkeypatch.setattr(LesionModule, "on_test_start", lambda self: tested.append(
        {k: v.detach().clone() for k, v in self.state_dict().items()}))
    result = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1, "ema_decay": 0.5}), test=True)
    best = safe_torch_load(result.best_ckpt)
    averaged, raw = best["state_dict"], best["current_model_state"]
    assert len(tested) == 1 and "test/balanced_accuracy" in result.metrics
    differ = [k for k in averaged if averaged[k].is_floating_point() and not torch.equal(averaged[k], raw[k])]
    assert differ and all(torch.equal(tested[0][k], averaged[k]) for k in differ)  # the average, not the raw
