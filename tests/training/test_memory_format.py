"""Channels-last training: the callback converts weights and batches, and its checkpoints load and export."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from backend.files import safe_torch_load
from backend.io.bundle import load_bundle
from backend.io.checkpoint import load_lesion_checkpoint
from backend.training.memory_format import ChannelsLast, to_channels_last
from backend.training.run import build_trainer, fit
from backend.workflows.export import export_bundle
from tests.training.test_run import tiny_cfg

CL = torch.channels_last


def test_to_channels_last_converts_images_in_every_container():
    image, vector = torch.randn(2, 3, 8, 8), torch.randn(2, 5)
    batch = {"image": image, "meta": vector}
    assert to_channels_last(batch) is batch
    assert batch["image"].is_contiguous(memory_format=CL) and not image.is_contiguous(memory_format=CL)
    assert batch["meta"] is vector
    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    to_channels_last(views)
    assert all(v.is_contiguous(memory_format=CL) for v in views)
    pair = to_channels_last((torch.randn(2, 3, 8, 8), torch.tensor([1, 0])))
    assert pair[0].is_contiguous(memory_format=CL) and pair[1].dim() == 1
    converted = to_channels_last(image)
    assert converted.is_contiguous(memory_format=CL) and torch.equal(converted, image)


class _Probe(L.LightningModule):
    """Records the memory layout its convolution sees at each training step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((batch["image"].is_contiguous(memory_format=CL),
                          self.conv.weight.is_contiguous(memory_format=CL)))
        return self.conv(batch["image"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("enabled", [True, False])
def test_callback_puts_weights_and_images_in_channels_last(tmp_path, enabled):
    data = [{"image": torch.randn(3, 10, 10)} for _ in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    module = _Probe()
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ChannelsLast()] if enabled else [])
    trainer.fit(module, loader)
    assert module.seen == [(enabled, enabled)] * 2


def test_trainer_adds_the_callback_only_when_configured(dataset, tmp_path):
    def has_callback(flag: bool) -> bool:
        cfg = tiny_cfg(dataset, tmp_path, trainer={"channels_last": flag})
        trainer = build_trainer(cfg, tmp_path / "runs" / "exp" / "version_0")
        return any(isinstance(c, ChannelsLast) for c in trainer.callbacks)

    assert has_callback(True) and not has_callback(False)


def _conv_weights_channels_last(ckpt: Path) -> bool:
    state = safe_torch_load(ckpt)["state_dict"]
    convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4 and v.shape[-1] > 1]
    assert convs, "no 3x3 convolution weights in the checkpoint"
    return all(v.is_contiguous(memory_format=CL) for v in convs)


def test_channels_last_run_trains_resumes_and_exports(dataset, tmp_path):
    cfg = tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 1, "channels_last": True})
    result = fit(cfg, test=False)
    assert _conv_weights_channels_last(result.last_ckpt)
    # A resumed run loads the checkpoint into the converted weights and stays channels-last.
    resumed = fit(tiny_cfg(dataset, tmp_path, trainer={"max_epochs": 2, "channels_last": True}, resume_version=0),
                  test=False)
    assert resumed.run_dir == result.run_dir and safe_torch_load(resumed.last_ckpt)["epoch"] == 1
    assert _conv_weights_channels_last(resumed.last_ckpt)
    plain = fit(tiny_cfg(dataset, tmp_path / "plain", trainer={"max_epochs": 1}), test=False)
    assert not _conv_weights_channels_last(plain.last_ckpt)
    # Its checkpoint rebuilds the model, and the bundle (safetensors refuses non-contiguous tensors)
    # exports and gives the same outputs.
    loaded = load_lesion_checkpoint(resumed.run_dir / "ckpts" / "best.ckpt")
    images = torch.rand(2, 3, 32, 32)
    reference = loaded.net.eval()(images).diagnosis_logits
    export_bundle(resumed.run_dir / "ckpts" / "best.ckpt", tmp_path / "bundle", name="cl", version="0",
                  csv=cfg.data.csv, img_dir=cfg.data.img_dir, splits_csv=resumed.run_dir / "splits.csv", onnx=False)
    bundle = load_bundle(tmp_path / "bundle")
    assert torch.allclose(bundle.model.net.eval()(images).diagnosis_logits, reference, atol=1e-5)


def test_byol_trainer_adds_the_callback_only_when_configured(tmp_path):
    from backend.config import from_dict
    from backend.training.byol_config import ByolConfig
    from backend.training.byol_run import build_trainer as build_byol_trainer

    def has_callback(flag: bool) -> bool:
        cfg = from_dict(ByolConfig, {"data": {"dirs": [str(tmp_path)]}, "trainer": {"channels_last": flag}})
        trainer = build_byol_trainer(cfg, tmp_path / "logs" / "byol" / "version_0", [])
        return any(isinstance(c, ChannelsLast) for c in trainer.callbacks)

    assert has_callback(True) and not has_callback(False)
