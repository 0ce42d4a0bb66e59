"""Re-estimating folded BatchNorm: eval outputs unchanged, running statistics those of the data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backend.models.batchnorm import reestimate_batchnorm


def folded_net() -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN with BatchNorm as TFLite folds it: weight 1, mean 0, var 1 - eps."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4))
    for bn in (net[1], net[4]):
        nn.init.ones_(bn.weight)
        nn.init.normal_(bn.bias, 0, 0.5)
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
    return net


def batches(n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 16, 16, generator=gen) * 2 + 0.5 for _ in range(n)]


def test_eval_outputs_unchanged_and_running_stats_match_the_data():
    net = folded_net().eval()
    data = batches()
    with torch.no_grad():
        before = [net(x) for x in data]
        first_conv = torch.cat([net[0](x) for x in data])
    assert reestimate_batchnorm(net, data) == 32
    with torch.no_grad():
        after = [net(x) for x in data]
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(net[1].running_mean, first_conv.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(net[1].running_var, first_conv.var(dim=(0, 2, 3), unbiased=False), atol=1e-3)


def test_train_mode_then_tracks_eval_mode():
    net = folded_net()
    data = batches()
    x = torch.cat(data)
    with torch.no_grad():
        eval_out = net.eval()(x)
        gap_before = (net.train()(x) - eval_out).abs().mean()
        reestimate_batchnorm(net, data)
        gap_after = (net.train()(x) - net.eval()(x)).abs().mean()
    assert gap_after < 0.05 * gap_before
    assert net.training is False  # the mode it was called in is restored (eval here)


def test_no_data_or_no_batchnorm_is_a_clear_error():
    with pytest.raises(ValueError, match="no images"):
        reestimate_batchnorm(folded_net(), [])
    with pytest.raises(ValueError, match="no affine BatchNorm"):
        reestimate_batchnorm(nn.Linear(3, 3), batches())
