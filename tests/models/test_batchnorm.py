"""BatchNorm statistics: folded ones re-estimated (eval outputs unchanged), trained ones adapted to new data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backend.models.batchnorm import adapt_batchnorm, reestimate_batchnorm


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


def dropout_net() -> nn.Sequential:
    """Dropout first: were it on while adapting, the first BatchNorm would see other inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Dropout(0.5), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()


def test_adapt_sets_running_stats_to_the_new_data_with_dropout_off():
    net = dropout_net()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    data = [torch.cat(batches())]  # one batch: the cumulative average is that batch's statistics
    with torch.no_grad():
        first_conv = net[1](data[0])
        before = net(data[0])
    assert adapt_batchnorm(net, data) == 32
    assert torch.allclose(net[2].running_mean, first_conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(net[2].running_var, first_conv.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    # The second layer saw the first one normalised with batch statistics (train-mode BatchNorm).
    with torch.no_grad():
        second_in = net[4](net[3](nn.functional.batch_norm(first_conv, None, None, net[2].weight, net[2].bias,
                                                           training=True)))
    assert torch.allclose(net[5].running_mean, second_in.mean(dim=(0, 2, 3)), atol=1e-5)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())  # weights untouched
    assert net.training is False and not any(m.training for m in net.modules())
    assert net[2].momentum == 0.1
    with torch.no_grad():
        assert not torch.allclose(net(data[0]), before, atol=1e-3)  # unlike reestimate: the function changes


def test_adapt_without_data_or_batchnorm_is_a_clear_error_and_keeps_the_statistics():
    net = dropout_net()
    net[2].running_mean.fill_(0.3)
    saved = net[2].running_mean.clone(), net[2].running_var.clone()
    with pytest.raises(ValueError, match="no images"):
        adapt_batchnorm(net, [])
    assert torch.equal(net[2].running_mean, saved[0]) and torch.equal(net[2].running_var, saved[1])
    assert net[2].momentum == 0.1

    def broken():
        yield batches()[0]
        raise RuntimeError("unreadable batch")

    with pytest.raises(RuntimeError, match="unreadable"):
        adapt_batchnorm(net, broken())
    assert torch.equal(net[2].running_mean, saved[0])  # interrupted: the trained statistics are back
    with pytest.raises(ValueError, match="no BatchNorm"):
        adapt_batchnorm(nn.Linear(3, 3), batches())
