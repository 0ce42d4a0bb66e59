"""Epoch metrics under DDP: every process computes the same metrics, even one whose shard updated none."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import MeanAbsoluteError
from torchmetrics.classification import BinaryAUROC

from backend.metrics.collection import updated_on_any_rank


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    mae, auroc, never = MeanAbsoluteError(), BinaryAUROC(), MeanAbsoluteError()
    if rank == 0:  # only rank 0's shard had melanomas with an exact thickness (the thickness error's case)
        mae.update(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0]))
    auroc.update(torch.tensor([0.9, 0.2, 0.7]) if rank == 0 else torch.tensor([0.8, 0.1]),  # every shard
                 torch.tensor([1, 0, 0]) if rank == 0 else torch.tensor([1, 0]))
    flags = updated_on_any_rank([mae, auroc, never])
    values = [float(m.compute()) for m, updated in zip((mae, auroc, never), flags, strict=True) if updated]
    torch.save({"flags": flags, "values": values}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_process_without_updates_joins_the_gather_instead_of_hanging(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn",
                       join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["flags"] == ranks[1]["flags"] == [True, True, False]
    assert ranks[0]["values"] == pytest.approx(ranks[1]["values"])
    assert ranks[0]["values"] == pytest.approx([0.75, 1.0])  # the thickness error of rank 0's data, seen by both
    assert updated_on_any_rank([MeanAbsoluteError()]) == [False]  # without DDP: the local answer
