"""The three training losses: diagnosis cross-entropy, derived malignancy BCE, interval thickness.

* :class:`DiagnosisLoss`: cross-entropy over the eight diagnoses, class-weighted or logit-adjusted
  for their imbalance, optionally label-smoothed; rows with diagnosis ``-1`` (UNK, label-only) are
  ignored.
* :func:`malignancy_loss`: binary cross-entropy of ``P(MEL) + P(BCC) + P(SCC)`` from the same
  logits, so rows without an eight-class diagnosis still teach benign vs malignant.
* :func:`interval_thickness_loss`: Breslow labels are often bands (``<0.76 mm``) or open bounds
  (``>1.5 mm``), so the loss is zero inside the label interval and grows with the distance
  outside it; an exact label is the interval ``[t, t]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backend.data.schema import MALIGNANT_INDICES

THICKNESS_LOSS_KINDS = ("smooth_l1", "l2")


def interval_thickness_loss(
    pred: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, kind: str = "smooth_l1", delta: float = 1.0
) -> torch.Tensor:
    """Mean distance-outside-the-interval loss over rows with a thickness label.

    Per row, ``d = max(lo - pred, 0) + max(pred - hi, 0)`` (zero when ``lo <= pred <= hi``), then
    ``smooth_l1``: ``0.5 * d**2 / delta`` for ``d < delta`` else ``d - 0.5 * delta`` (Huber, as
    ``torch.nn.functional.smooth_l1_loss`` with ``beta=delta``), or ``l2``: ``d**2``. All values
    are in the caller's normalised units (lo/hi scaled by the same monotone map as the targets).

    Args:
        pred: Predicted thickness, shape ``(N,)`` or ``(N, 1)``.
        lo: Interval lower bound; NaN = no thickness label (row ignored).
        hi: Interval upper bound; ``+inf`` (or NaN with a finite ``lo``) = lower bound only.
        kind: ``smooth_l1`` or ``l2``.
        delta: Huber transition point of ``smooth_l1``.

    Returns:
        Scalar mean over labelled rows; ``pred.sum() * 0`` (graph intact) when none is labelled.

    Raises:
        ValueError: On an unknown ``kind``, a non-positive ``delta`` or mismatched shapes.
    """
    if kind not in THICKNESS_LOSS_KINDS:
        raise ValueError(f"kind must be one of {THICKNESS_LOSS_KINDS}, got {kind!r}")
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    pred_flat = pred.reshape(-1)
    lo, hi = lo.reshape(-1).to(pred_flat.device), hi.reshape(-1).to(pred_flat.device)
    if not pred_flat.shape == lo.shape == hi.shape:
        raise ValueError(f"pred, lo, hi must have the same length, got {pred.shape}, {lo.shape}, {hi.shape}")
    labelled = ~torch.isnan(lo)
    if not bool(labelled.any()):
        return pred.sum() * 0.0
    p = pred_flat[labelled].float()
    lo_l = lo[labelled].float()
    hi_l = torch.nan_to_num(hi[labelled].float(), nan=float("inf"))
    distance = F.relu(lo_l - p) + F.relu(p - hi_l)
    if kind == "l2":
        per_row = distance**2
    else:
        per_row = F.smooth_l1_loss(distance, torch.zeros_like(distance), beta=delta, reduction="none")
    return per_row.mean()


def logit_adjustment_offsets(priors: torch.Tensor | list[float], tau: float = 1.0, floor: float = 1e-6) -> torch.Tensor:
    """``tau * log(prior)`` per class: what the logit-adjusted loss adds to the logits during training.

    Logit adjustment (Menon et al., ICLR 2021) trains ``softmax(logits + tau * log prior)`` against
    the labels, so the network's own logits learn the class-balanced posterior: their argmax is the
    decision that maximises balanced accuracy, without re-weighting rows (which with rare classes
    sixty times scarcer than naevi makes a few images dominate the gradient). Classes absent from
    the training split get the prior ``floor``.

    Raises:
        ValueError: Negative or non-finite priors, or ``tau`` not > 0.
    """
    p = torch.as_tensor(priors, dtype=torch.float32).reshape(-1)
    if not torch.isfinite(p).all() or bool((p < 0).any()) or not float(p.sum()) > 0:
        raise ValueError(f"class priors must be finite, >= 0 and not all 0, got {p.tolist()}")
    if not tau > 0:
        raise ValueError(f"logit adjustment tau must be > 0, got {tau}")
    return tau * torch.log((p / p.sum()).clamp_min(floor))


class DiagnosisLoss(nn.Module):
    """Cross-entropy over the diagnoses, class-weighted or logit-adjusted, label-smoothed, ignoring target ``-1``.

    This is ``torch.nn.functional.cross_entropy(logits + logit_offsets, weight, ignore_index=-1,
    label_smoothing)``.
    With both weights and smoothing, torch weights the smoothing term per *class* and normalises
    the mean by the summed weights of the *targets*:
    ``(1 - eps) * sum_i w_yi * nll_i / sum_i w_yi
    + eps / C * sum_i sum_c w_c * (-log p_ic) / sum_i w_yi``.

    Args:
        class_weights: Per-class weights (length C), or None for unweighted.
        label_smoothing: Smoothing ``eps`` in [0, 1).
        logit_offsets: Per-class offsets added to the logits inside the loss only
            (:func:`logit_adjustment_offsets`), or None.
    """

    def __init__(self, class_weights: torch.Tensor | list[float] | None = None, label_smoothing: float = 0.0,
                 logit_offsets: torch.Tensor | list[float] | None = None) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
        if weight is not None and (not torch.isfinite(weight).all() or bool((weight < 0).any())):
            raise ValueError("class_weights must be finite and >= 0")
        # Not persistent: the weights are a hyper-parameter, and checkpoints stay loss-free.
        self.register_buffer("class_weights", weight, persistent=False)
        offsets = None if logit_offsets is None else torch.as_tensor(logit_offsets, dtype=torch.float32).reshape(-1)
        if offsets is not None and not torch.isfinite(offsets).all():
            raise ValueError(f"logit_offsets must be finite, got {offsets.tolist()}")
        self.register_buffer("logit_offsets", offsets, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over rows with ``target >= 0``; ``logits.sum() * 0`` when there is none."""
        if self.class_weights is not None and self.class_weights.numel() != logits.shape[1]:
            raise ValueError(f"{self.class_weights.numel()} class weights for {logits.shape[1]} logits")
        if self.logit_offsets is not None:
            if self.logit_offsets.numel() != logits.shape[1]:
                raise ValueError(f"{self.logit_offsets.numel()} logit offsets for {logits.shape[1]} logits")
            logits = logits + self.logit_offsets.to(logits.dtype)
        target = target.long()
        if not bool((target >= 0).any()):
            return logits.sum() * 0.0
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=-1, label_smoothing=self.label_smoothing)


def malignant_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P(malignant), log P(benign))`` per row from diagnosis logits, computed stably.

    ``log P(malignant) = logsumexp(logits[:, MEL|BCC|SCC]) - logsumexp(logits)``; the benign term
    uses the other columns, so neither is ``log(1 - p)`` of a rounded ``p``.
    """
    mal = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    mal[list(MALIGNANT_INDICES)] = True
    total = torch.logsumexp(logits, dim=1)
    return torch.logsumexp(logits[:, mal], dim=1) - total, torch.logsumexp(logits[:, ~mal], dim=1) - total


def malignancy_loss(diag_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the derived malignant probability, over rows with a known label.

    Args:
        diag_logits: Diagnosis logits in :data:`DIAGNOSES` order, shape ``(N, 8)``.
        label: 1 malignant / 0 benign per row; ``-1`` or NaN = unknown (ignored). Rows with an
            unknown diagnosis (UNK) still count here.

    Returns:
        Scalar mean over labelled rows; ``diag_logits.sum() * 0`` when none is labelled.
    """
    label = label.reshape(-1).to(diag_logits.device)
    known = (label == 0) | (label == 1)
    if not bool(known.any()):
        return diag_logits.sum() * 0.0
    log_mal, log_benign = malignant_log_probs(diag_logits[known].float())
    return -torch.where(label[known] == 1, log_mal, log_benign).mean()
