"""BatchNorm statistics: re-estimated for a pretrained start, or adapted to a new input resolution.

Weights ported from TensorFlow Lite (the ImageNet MobileNetV2 in ``../shared/pretrained``) come
with every BatchNorm folded into the convolution before it: weight 1, running mean 0, running
variance ``1 - eps``. In eval mode that is exactly the original network, but in train mode
BatchNorm normalises with batch statistics that this identity setting does not match, so the
network's function jumps at the first training step and much of the pretraining is lost.

:func:`reestimate_batchnorm` runs images through the model once in eval mode, records each
BatchNorm input's per-channel mean ``m`` and variance ``v``, and re-parameterises the layer so that
its running statistics are ``(m, v)`` while its eval-mode output stays the same::

    new_weight = weight * sqrt(v + eps) / sqrt(running_var + eps)
    new_bias   = bias + weight * (m - running_mean) / sqrt(running_var + eps)

For a folded layer that is ``weight = sqrt(v + eps)``, ``bias = bias + m``. Because every layer's
eval output is unchanged, all layers can be measured in the same single pass. Afterwards batch
statistics in train mode are close to the running ones, so fine-tuning starts from the
pretrained function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)


class _ChannelMoments:
    """Running per-channel sum, sum of squares and count of a BatchNorm's inputs (float64)."""

    def __init__(self, channels: int) -> None:
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.sq = torch.zeros(channels, dtype=torch.float64)
        self.count = 0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(x.ndim) if d != 1]
        self.sum += x.sum(dim=dims).cpu()
        self.sq += (x * x).sum(dim=dims).cpu()
        self.count += x.numel() // x.shape[1]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.count
        var = (self.sq / self.count - mean * mean).clamp_min(0.0)
        return mean, var


def _feed(model: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object] | None) -> int:
    """Run ``forward`` (default ``model``) on every batch; the number of images seen."""
    seen = 0
    for batch in batches:
        (forward or model)(batch)
        seen += int(batch.shape[0])
    return seen


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object] | None = None,
) -> int:
    """Set every BatchNorm's running statistics to those of ``batches``, keeping eval outputs.

    Args:
        model: The module whose BatchNorm layers are re-estimated (e.g. a backbone).
        batches: Input tensors ``(B, C, H, W)``, eval-transformed training images.
        forward: What to call on each batch (default ``model``).

    Returns:
        The number of images seen.

    Raises:
        ValueError: When ``batches`` yields nothing, or the model has no affine BatchNorm layer.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.affine and m.track_running_stats]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no affine BatchNorm layer with running statistics")
    moments = {layer: _ChannelMoments(layer.num_features) for layer in layers}
    handles = [layer.register_forward_pre_hook(moments[layer]) for layer in layers]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        seen = _feed(model, batches, forward)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no images to re-estimate BatchNorm statistics with")
    for layer in layers:
        mean, var = moments[layer].mean_var()
        dtype = layer.weight.dtype
        old_mean = layer.running_mean.to(torch.float64).cpu()
        old_std = (layer.running_var.to(torch.float64).cpu() + layer.eps).sqrt()
        weight = layer.weight.detach().to(torch.float64).cpu()
        bias = layer.bias.detach().to(torch.float64).cpu()
        new_weight = weight * (var + layer.eps).sqrt() / old_std
        new_bias = bias + weight * (mean - old_mean) / old_std
        device = layer.weight.device
        layer.weight.copy_(new_weight.to(device, dtype))
        layer.bias.copy_(new_bias.to(device, dtype))
        layer.running_mean.copy_(mean.to(device, layer.running_mean.dtype))
        layer.running_var.copy_(var.to(device, layer.running_var.dtype))
    log.info("re-estimated %d BatchNorm layers on %d images", len(layers), seen)
    return seen


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object] | None = None,
) -> int:
    """Replace every BatchNorm's running statistics by those of ``batches`` (the weights stay).

    Unlike :func:`reestimate_batchnorm` this *changes* what the network computes: it is for a
    trained network that will see inputs of another kind than in training, above all another input
    resolution (Touvron et al., "Fixing the train-test resolution discrepancy", 2019): apparent
    object size and pixel statistics shift with the side, and so do the activations BatchNorm
    normalises. Each layer is put in train mode with a cumulative average (``momentum=None``) over
    the batches, as ``torch.optim.swa_utils.update_bn`` does; unlike that helper, only the
    BatchNorm layers leave eval mode, so dropout and stochastic depth stay off while the
    statistics are measured.

    Args:
        model: The module whose BatchNorm layers are adapted (e.g. a backbone).
        batches: Input tensors ``(B, C, H, W)``: eval-transformed training images at the new side.
        forward: What to call on each batch (default ``model``).

    Returns:
        The number of images seen.

    Raises:
        ValueError: When ``batches`` yields nothing, or the model has no BatchNorm with running statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer with running statistics")
    saved = {layer: (layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone(),
                     layer.momentum) for layer in layers}
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    seen = 0  # stays 0 when interrupted: the finally block then restores the trained statistics
    try:
        seen = _feed(model, batches, forward)
    finally:
        for layer in layers:
            layer.momentum = saved[layer][3]
            if seen == 0:  # nothing measured (or interrupted): put the trained statistics back
                layer.running_mean.copy_(saved[layer][0])
                layer.running_var.copy_(saved[layer][1])
                layer.num_batches_tracked.copy_(saved[layer][2])
        model.train(was_training)
    if seen == 0:
        raise ValueError("no images to adapt BatchNorm statistics with")
    log.info("adapted %d BatchNorm layers to %d images", len(layers), seen)
    return seen
