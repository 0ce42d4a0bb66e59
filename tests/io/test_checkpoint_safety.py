"""Checkpoints are read with weights_only=True: a pickle that would run code is refused and never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from backend.errors import CheckpointError
from backend.files import atomic_torch_save, safe_torch_load
from backend.inference.predictor import Predictor


class Exploit:
    """Unpickling this calls ``Path.touch(marker)``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": Exploit(marker)}}, ckpt)
    with pytest.raises(CheckpointError, match="refused to load"):
        Predictor.from_checkpoint(ckpt)
    assert not marker.exists()


def test_plain_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pkl"
    ckpt.write_bytes(pickle.dumps({"state_dict": Exploit(marker)}))
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(ckpt)
    assert not marker.exists()


def test_foreign_and_garbage_files_are_checkpoint_errors(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a DermaLens training checkpoint"):
        Predictor.from_checkpoint(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        Predictor.from_checkpoint(garbage)


def test_a_table_or_a_byol_checkpoint_is_named_for_what_it_is(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("image,label\na.png,1\n")
    with pytest.raises(CheckpointError, match=r"labels.csv: not a PyTorch checkpoint") as info:
        safe_torch_load(table)
    assert "weights_only=False" not in str(info.value)  # torch's advice to run the file's code is never repeated
    byol = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"online_backbone.model.conv1.weight": torch.zeros(1)},
                "hyper_parameters": {"config": {"export_name": "backbone.safetensors"}}}, byol)
    with pytest.raises(CheckpointError, match="a BYOL pretraining checkpoint, not a trained lesion model"):
        Predictor.from_checkpoint(byol)


def test_atomic_torch_save_round_trips_with_weights_only(tmp_path):
    path = atomic_torch_save({"a": torch.arange(3), "b": [1, "x"]}, tmp_path / "sub" / "x.pt")
    loaded = safe_torch_load(path)
    assert torch.equal(loaded["a"], torch.arange(3)) and loaded["b"] == [1, "x"]


@pytest.mark.parametrize("payload", [b"", b"garbage" * 10, b"\x80\x02]q\x00", b"PK\x03\x04broken zip"])
def test_garbage_and_truncated_files_are_checkpoint_errors(tmp_path, payload):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        safe_torch_load(path)


def test_truncated_real_checkpoint_is_a_checkpoint_error(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        bad = tmp_path / f"cut{cut}.ckpt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.ckpt"):
            safe_torch_load(bad)
