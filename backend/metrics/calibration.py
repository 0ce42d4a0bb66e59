"""Probability calibration: temperature scaling, plain or bias-corrected; calibration error; reliability bins.

Temperature scaling (Guo et al. 2017) divides the diagnosis logits by one scalar ``T`` fitted on
the validation split by minimising the negative log-likelihood; it changes confidence but never
the predicted class. Bias-corrected temperature scaling (BCTS; Alexandari, Kundaje and Shrikumar,
ICML 2020) also fits one offset per class, ``softmax(logits / T + b)``: a network trained with a
class-weighted loss (or balanced sampling) predicts as if every diagnosis were equally common, and
the offsets put the real class frequencies back, which one temperature cannot do. The offsets are
what separates the calibrated probabilities from the class-balanced decision the network was
trained for: ``argmax(log p - b)`` is that decision (:func:`balanced_decision_scores`).

ECE and the reliability bins use the top-label definition and the same equal-width binning as
``torchmetrics.classification.MulticlassCalibrationError`` (bins ``[b_i, b_i+1)``), except that
confidence exactly 1 joins the last bin here (torchmetrics gives it a bin of its own).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _fit_nll(logits: Any, labels: Any, with_offsets: bool, max_iter: int) -> tuple[float, np.ndarray | None]:
    """L-BFGS on the NLL of ``softmax(logits / exp(s) + b)`` over ``s`` (and ``b`` when ``with_offsets``).

    Optimising ``log T`` keeps ``T`` positive without constraints.
    """
    import torch

    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    labels_t = torch.as_tensor(np.asarray(labels).reshape(-1).astype(np.int64))
    if logits_t.ndim != 2 or logits_t.shape[0] != labels_t.shape[0]:
        raise ValueError(f"logits {tuple(logits_t.shape)} and labels {tuple(labels_t.shape)} do not match")
    keep = labels_t >= 0
    if not bool(keep.any()):
        raise ValueError("no row with a label to fit the calibration on")
    logits_t, labels_t = logits_t[keep], labels_t[keep]
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    offsets = torch.zeros(logits_t.shape[1], dtype=torch.float64, requires_grad=with_offsets)
    params = [log_t, offsets] if with_offsets else [log_t]
    optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp() + offsets, labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    b = offsets.detach().numpy()
    return float(log_t.detach().exp()), (b - b.mean()) if with_offsets else None


def fit_temperature(logits: Any, labels: Any, max_iter: int = 100) -> float:
    """Fit the temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)``.

    ``log T`` is optimised with L-BFGS, which keeps ``T`` positive without constraints.

    Args:
        logits: Diagnosis logits, shape ``(N, C)`` (numpy or torch).
        labels: Class index per row; rows with ``-1`` (unknown) are ignored.
        max_iter: L-BFGS iterations.

    Returns:
        The fitted temperature (``> 1`` softens over-confident predictions).

    Raises:
        ValueError: On mismatched shapes or when no row has a label.
    """
    return _fit_nll(logits, labels, with_offsets=False, max_iter=max_iter)[0]


def fit_bias_corrected_temperature(logits: Any, labels: Any, max_iter: int = 200) -> tuple[float, np.ndarray]:
    """Fit ``T > 0`` and per-class offsets ``b`` minimising the NLL of ``softmax(logits / T + b)``.

    The offsets are centred (they sum to 0): adding a constant to every class changes nothing.

    Args:
        logits: Diagnosis logits, shape ``(N, C)``.
        labels: Class index per row; rows with ``-1`` (unknown) are ignored.
        max_iter: L-BFGS iterations.

    Returns:
        ``(temperature, offsets)`` with ``offsets`` of shape ``(C,)``.

    Raises:
        ValueError: On mismatched shapes or when no row has a label.
    """
    temperature, offsets = _fit_nll(logits, labels, with_offsets=True, max_iter=max_iter)
    assert offsets is not None
    return temperature, offsets


#: Calibration methods export can fit: name -> what the card calls it.
CALIBRATION_METHODS = {"temperature": "temperature scaling", "bias_corrected": "bias-corrected temperature scaling"}


def fit_calibration(logits: Any, labels: Any, method: str = "temperature") -> tuple[float, np.ndarray | None]:
    """Fit ``method`` (a key of :data:`CALIBRATION_METHODS`): ``(temperature, offsets or None)``.

    Raises:
        ValueError: An unknown method (named), mismatched shapes or no labelled row.
    """
    if method == "temperature":
        return fit_temperature(logits, labels), None
    if method == "bias_corrected":
        return fit_bias_corrected_temperature(logits, labels)
    raise ValueError(f"unknown calibration method {method!r}; valid: {sorted(CALIBRATION_METHODS)}")


def calibrated_probs(logits: Any, temperature: float, offsets: Any = None) -> np.ndarray:
    """``softmax(logits / temperature + offsets)`` (offsets None: plain temperature scaling)."""
    z = np.asarray(logits, dtype=np.float64)
    if offsets is not None:
        z = z + float(temperature) * np.asarray(offsets, dtype=np.float64)
    return apply_temperature(z, temperature)


def balanced_decision_scores(probs: Any, offsets: Any = None) -> np.ndarray:
    """Scores whose argmax is the class-balanced decision: ``log p - offsets`` (``probs`` without offsets).

    With calibration offsets from :func:`fit_bias_corrected_temperature` this undoes the class
    frequencies the offsets put in: the argmax is the diagnosis the class-weighted network calls,
    each diagnosis counted as equally common, while ``probs`` stay the calibrated probabilities.
    """
    p = np.asarray(probs, dtype=np.float64)
    if offsets is None:
        return p
    b = np.asarray(offsets, dtype=np.float64).reshape(-1)
    if b.shape[0] != p.shape[-1]:
        raise ValueError(f"{b.shape[0]} calibration offsets for {p.shape[-1]} classes")
    return np.log(np.clip(p, 1e-300, None)) - b


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)`` as a numpy array."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin data of a top-label reliability diagram.

    Args:
        probs: Probabilities, shape ``(N, C)``.
        labels: Class index per row; ``-1`` rows are ignored.
        n_bins: Number of equal-width confidence bins on [0, 1].

    Returns:
        One row per bin: ``bin_lo``, ``bin_hi``, ``count``, ``confidence`` (mean top probability)
        and ``accuracy`` (fraction whose top class is right); both NaN in empty bins.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(int)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} do not match")
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {"bin_lo": edges[:-1], "bin_hi": edges[1:], "count": count, "confidence": conf, "accuracy": acc}
    )


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error: ``sum_b (n_b / N) * |accuracy_b - confidence_b|``.

    Args:
        probs: Probabilities, shape ``(N, C)``.
        labels: Class index per row; ``-1`` rows are ignored.
        n_bins: Number of equal-width confidence bins.

    Returns:
        ECE in [0, 1], or NaN when no row has a label.
    """
    bins = reliability_diagram(probs, labels, n_bins)
    total = bins["count"].sum()
    if total == 0:
        return float("nan")
    filled = bins[bins["count"] > 0]
    return float((filled["count"] / total * (filled["accuracy"] - filled["confidence"]).abs()).sum())
