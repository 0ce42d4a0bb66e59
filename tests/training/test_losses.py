"""Training losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backend.data.schema import MALIGNANT_INDICES
from backend.training.losses import (
    DiagnosisLoss,
    interval_thickness_loss,
    logit_adjustment_offsets,
    malignancy_loss,
    malignant_log_probs,
)

INF, NAN = math.inf, math.nan


# --------------------------------------------------------------------------- interval thickness


def test_interval_loss_zero_inside_and_hand_computed_outside():
    #                 inside  below   above   exact   open-above  open-below  unlabelled
    pred = torch.tensor([0.5, -0.5, 3.0, 1.2, 5.0, 0.5, 9.0], requires_grad=True)
    lo = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.5, 1.5, NAN])
    hi = torch.tensor([1.0, 1.0, 1.0, 1.0, INF, INF, NAN])
    # distances: 0, 0.5, 2.0, 0.2, 0, 1.0 (row 7 ignored)
    l2 = interval_thickness_loss(pred, lo, hi, kind="l2")
    assert l2.item() == pytest.approx((0.25 + 4.0 + 0.04 + 1.0) / 6)
    # smooth L1, delta 1: d<1 -> 0.5 d^2, else d - 0.5
    huber = interval_thickness_loss(pred, lo, hi, kind="smooth_l1", delta=1.0)
    assert huber.item() == pytest.approx((0.125 + 1.5 + 0.02 + 0.5) / 6)
    # delta 0.5: d<0.5 -> d^2, else d - 0.25
    huber_half = interval_thickness_loss(pred, lo, hi, kind="smooth_l1", delta=0.5)
    assert huber_half.item() == pytest.approx((0.25 + 1.75 + 0.04 + 0.75) / 6)


def test_interval_loss_gradient_pushes_into_interval_and_ignores_unlabelled():
    pred = torch.tensor([[0.5], [-0.5], [3.0], [9.0]], requires_grad=True)
    lo = torch.tensor([0.0, 0.0, 0.0, NAN])
    hi = torch.tensor([1.0, 1.0, 1.0, NAN])
    interval_thickness_loss(pred, lo, hi, kind="l2").backward()
    grad = pred.grad.reshape(-1)
    assert grad[0] == 0 and grad[3] == 0  # inside / unlabelled: no gradient
    assert grad[1].item() == pytest.approx(2 * (-0.5) / 3)  # d/dp (lo - p)^2 / 3
    assert grad[2].item() == pytest.approx(2 * 2.0 / 3)
    assert torch.isfinite(grad).all()


def test_interval_loss_nan_hi_with_lo_is_open_bound():
    pred = torch.tensor([0.5, 2.0])
    loss = interval_thickness_loss(pred, torch.tensor([1.5, 1.5]), torch.tensor([NAN, NAN]), kind="l2")
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)


def test_interval_loss_without_labels_is_zero_with_graph():
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = interval_thickness_loss(pred, torch.tensor([NAN, NAN]), torch.tensor([NAN, NAN]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(2))


def test_interval_loss_rejects_bad_arguments():
    p = torch.zeros(2)
    with pytest.raises(ValueError, match="kind must be one of"):
        interval_thickness_loss(p, p, p, kind="l1")
    with pytest.raises(ValueError, match="same length"):
        interval_thickness_loss(p, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="delta must be > 0"):
        interval_thickness_loss(p, p, p, delta=0)


# --------------------------------------------------------------------------- diagnosis CE


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [5.0, 0.0, 0.0]]
TARGET = [0, 2, 2, -1]  # last row: unknown diagnosis
WEIGHTS = [1.0, 2.0, 0.5]


def test_weighted_ce_ignores_unknown_rows_hand_computed():
    loss = DiagnosisLoss(WEIGHTS)(torch.tensor(LOGITS), torch.tensor(TARGET))
    rows = [(log_softmax(LOGITS[i]), TARGET[i]) for i in range(3)]
    num = sum(-WEIGHTS[t] * lp[t] for lp, t in rows)
    den = sum(WEIGHTS[t] for _, t in rows)
    assert loss.item() == pytest.approx(num / den, rel=1e-6)


def test_weighted_label_smoothing_follows_torch_semantics():
    eps, c = 0.1, 3
    loss = DiagnosisLoss(torch.tensor(WEIGHTS), label_smoothing=eps)(torch.tensor(LOGITS), torch.tensor(TARGET))
    rows = [(log_softmax(LOGITS[i]), TARGET[i]) for i in range(3)]
    den = sum(WEIGHTS[t] for _, t in rows)
    nll = sum(-WEIGHTS[t] * lp[t] for lp, t in rows) / den
    # smoothing term: per-class weights inside, normalised by the targets' summed weights
    smooth = sum(-sum(WEIGHTS[k] * lp[k] for k in range(c)) for lp, _ in rows) / den
    expected = (1 - eps) * nll + eps / c * smooth
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_unweighted_ce_and_all_unknown_batch():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = DiagnosisLoss()(logits, torch.tensor(TARGET))
    assert loss.item() == pytest.approx(sum(-log_softmax(LOGITS[i])[TARGET[i]] for i in range(3)) / 3, rel=1e-6)
    zero = DiagnosisLoss(WEIGHTS)(logits, torch.tensor([-1, -1, -1, -1]))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="2 class weights for 3 logits"):
        DiagnosisLoss([1.0, 1.0])(logits, torch.tensor(TARGET))
    with pytest.raises(ValueError, match="label_smoothing"):
        DiagnosisLoss(label_smoothing=1.0)


def test_class_weights_follow_the_module_and_stay_out_of_state_dict():
    module = DiagnosisLoss(WEIGHTS).to(torch.float64)
    assert "class_weights" not in module.state_dict()
    assert isinstance(module.class_weights, torch.Tensor)


def test_logit_adjustment_offsets_are_tau_log_prior_hand_computed():
    offsets = logit_adjustment_offsets([6.0, 3.0, 1.0, 0.0], tau=0.5)  # counts are normalised; absent -> floor
    expected = [0.5 * math.log(0.6), 0.5 * math.log(0.3), 0.5 * math.log(0.1), 0.5 * math.log(1e-6)]
    assert offsets.tolist() == pytest.approx(expected, rel=1e-5)
    for bad in ([0.5, -0.1, 0.6], [0.0, 0.0], [math.nan, 1.0]):
        with pytest.raises(ValueError, match="class priors"):
            logit_adjustment_offsets(bad)
    with pytest.raises(ValueError, match="tau must be > 0, got 0"):
        logit_adjustment_offsets([0.5, 0.5], tau=0)


def test_logit_adjusted_ce_shifts_the_logits_inside_the_loss_only():
    offsets = [math.log(0.7), math.log(0.2), math.log(0.1)]
    loss = DiagnosisLoss(logit_offsets=offsets)(torch.tensor(LOGITS), torch.tensor(TARGET))
    shifted = [[z + o for z, o in zip(row, offsets, strict=True)] for row in LOGITS]
    assert loss.item() == pytest.approx(sum(-log_softmax(shifted[i])[TARGET[i]] for i in range(3)) / 3, rel=1e-6)
    assert "logit_offsets" not in DiagnosisLoss(logit_offsets=offsets).state_dict()
    with pytest.raises(ValueError, match="2 logit offsets for 3 logits"):
        DiagnosisLoss(logit_offsets=[0.0, 0.0])(torch.tensor(LOGITS), torch.tensor(TARGET))


def test_logit_adjusted_training_learns_balanced_logits_plain_ce_learns_the_priors():
    """A free logit vector fitted to labels drawn 70/20/10: plain CE learns log prior, the adjusted loss uniform."""
    priors = torch.tensor([0.7, 0.2, 0.1])
    target = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)

    def fit(loss_fn: DiagnosisLoss) -> torch.Tensor:
        bias = torch.zeros(3, requires_grad=True)
        optimizer = torch.optim.LBFGS([bias], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_fn(bias.expand(len(target), 3), target)
            loss.backward()
            return loss

        optimizer.step(closure)
        return (bias - bias.mean()).detach()

    plain = fit(DiagnosisLoss())
    adjusted = fit(DiagnosisLoss(logit_offsets=logit_adjustment_offsets(priors)))
    log_prior = priors.log() - priors.log().mean()
    assert torch.allclose(plain, log_prior, atol=1e-3)
    assert torch.allclose(adjusted, torch.zeros(3), atol=1e-3)  # every class equally likely: the balanced call


# --------------------------------------------------------------------------- malignancy BCE


def test_malignant_probability_is_sum_of_mel_bcc_scc():
    assert MALIGNANT_INDICES == (0, 2, 7)
    logits = torch.tensor([[1.0, 2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.5]])
    p = logits.softmax(1)[0]
    log_mal, log_benign = malignant_log_probs(logits)
    assert log_mal.exp().item() == pytest.approx((p[0] + p[2] + p[7]).item(), rel=1e-6)
    assert log_benign.exp().item() == pytest.approx(1 - (p[0] + p[2] + p[7]).item(), rel=1e-6)


def test_malignancy_loss_hand_computed_with_unknown_labels():
    logits = torch.zeros(4, 8)
    logits[1, 1] = math.log(5.0)  # NV five times as likely as each other class
    label = torch.tensor([1, 0, -1, 1])  # row 2 unknown
    # row 0: p_mal = 3/8 ; row 1: sum exp = 7 + 5 = 12, p_benign = (1+1+1+1+5)/12 = 9/12 ; row 3 = row 0
    expected = -(math.log(3 / 8) + math.log(9 / 12) + math.log(3 / 8)) / 3
    assert malignancy_loss(logits, label).item() == pytest.approx(expected, rel=1e-6)
    assert malignancy_loss(logits, label.float().masked_fill(label < 0, NAN)).item() == pytest.approx(expected)


def test_malignancy_loss_is_stable_for_extreme_logits():
    logits = torch.zeros(2, 8, requires_grad=True)
    with torch.no_grad():
        logits[0, 1] = 200.0  # NV certain: p_mal = 3 e^-200, underflows as a float32 probability
        logits[1, 0] = 200.0  # MEL certain
    loss = malignancy_loss(logits, torch.tensor([1, 1]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx((200.0 - math.log(3.0)) / 2, rel=1e-4)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    naive = F.binary_cross_entropy(logits.detach().softmax(1)[:, [0, 2, 7]].sum(1), torch.ones(2))
    assert naive.item() < loss.item()  # probability-space BCE clamps log(p) at -100 and understates it


def test_malignancy_loss_without_labels_is_zero_with_graph():
    logits = torch.randn(3, 8, requires_grad=True)
    loss = malignancy_loss(logits, torch.tensor([-1, -1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad
