"""Re-estimate BatchNorm statistics of a pretrained start without changing what it computes.

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
        for batch in batches:
            (forward or model)(batch)
            seen += int(batch.shape[0])
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
