"""GradWeightMonitor: norms and histograms logged; a NaN loss or gradient is dumped and stops (or raises, or skips)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backend.errors import ConfigError, DermaLensError
from backend.training.monitor import GradWeightMonitor, NonFiniteTrainingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingLogger(Logger):
    """Keeps every logged metric dict and every histogram call."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.histograms: list[tuple[str, int]] = []

    @property
    def name(self) -> str:
        return "rec"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self):
        return self

    def add_histogram(self, tag, values, step) -> None:
        assert torch.isfinite(values).all()
        self.histograms.append((tag, step))

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class Tiny(L.LightningModule):
    """Linear -> BatchNorm -> Linear regression; ``poison`` maps a global step to "loss" or "grad"."""

    def __init__(self, poison: dict[int, str] | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 1)
        self.poison = poison or {}
        self.before_poison: dict[str, torch.Tensor] | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        kind = self.poison.get(self.global_step)
        if kind:
            self.before_poison = {k: v.detach().clone() for k, v in self.state_dict().items()}
        out = self.head(self.body(x)).squeeze(1)
        if kind == "grad":
            out.register_hook(lambda g: torch.full_like(g, float("inf")))  # finite loss, non-finite gradient
        loss = ((out - y) ** 2).mean()
        return loss * float("nan") if kind == "loss" else loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def fit(module: Tiny, monitor: GradWeightMonitor, tmp_path, max_steps: int = 6) -> tuple[L.Trainer, RecordingLogger]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 4), torch.randn(48))
    logger = RecordingLogger()
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=[monitor],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer, logger


def test_norms_every_n_steps_and_histograms(tmp_path):
    monitor = GradWeightMonitor(log_every_n_steps=2, histogram_every_n_steps=3)
    module = Tiny()
    _, logger = fit(module, monitor, tmp_path)
    norms = [(step, m) for step, m in logger.metrics if "monitor/grad_norm/total" in m]
    assert [step for step, _ in norms] == [0, 2, 4]
    for _, m in norms:
        assert m["monitor/grad_norm/total"] > 0 and math.isfinite(m["monitor/grad_norm/total"])
        assert m["monitor/grad_norm/total"] == pytest.approx(
            math.hypot(m["monitor/grad_norm/body"], m["monitor/grad_norm/head"]), rel=1e-5)
        assert m["monitor/weight_norm/total"] == pytest.approx(
            math.hypot(m["monitor/weight_norm/body"], m["monitor/weight_norm/head"]), rel=1e-5)
    params = {n for n, _ in module.named_parameters()}
    assert {tag for tag, step in logger.histograms if step == 3} == (
        {f"weights/{n}" for n in params} | {f"grads/{n}" for n in params})
    assert sorted({step for _, step in logger.histograms}) == [0, 3]
    assert not monitor.events


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_dumps_skips_the_step_and_stops(tmp_path, kind):
    monitor = GradWeightMonitor(on_nonfinite="stop", dump_dir=tmp_path / "dumps")
    module = Tiny(poison={2: kind})
    trainer, _ = fit(module, monitor, tmp_path, max_steps=50)
    assert trainer.global_step == 3  # stopped at the poisoned step instead of running to 50
    (event,) = monitor.events
    assert event["step"] == 2 and event["nonfinite_loss"] == (kind == "loss")
    assert set(event["nonfinite_grads"]) >= {"head.weight", "head.bias"} and not event["nonfinite_params"]
    dump = torch.load(event["dump"], weights_only=True)  # plain data and tensors only
    assert dump["event"]["step"] == 2 and set(dump["batch"]) == {"0", "1"} and dump["batch"]["0"].shape == (4, 4)
    assert not torch.isfinite(dump["grads"]["head.weight"]).all()
    for key, value in module.state_dict().items():  # the poisoned step changed nothing
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, module.before_poison[key]), key


def test_raise_and_skip_modes(tmp_path):
    with pytest.raises(NonFiniteTrainingError, match="non-finite loss at step 1") as info:
        fit(Tiny(poison={1: "loss"}), GradWeightMonitor(on_nonfinite="raise", dump_dir=tmp_path), tmp_path)
    assert isinstance(info.value, DermaLensError) and list(tmp_path.glob("nonfinite_step0000001.pt"))
    monitor = GradWeightMonitor(on_nonfinite="skip", dump_dir=tmp_path / "skip")
    module = Tiny(poison={1: "grad"})
    trainer, _ = fit(module, monitor, tmp_path, max_steps=5)
    assert trainer.global_step == 5 and len(monitor.events) == 1  # skipped one step, went on
    assert all(torch.isfinite(p).all() for p in module.parameters())
    with pytest.raises(ConfigError, match="on_nonfinite"):
        GradWeightMonitor(on_nonfinite="ignore")
