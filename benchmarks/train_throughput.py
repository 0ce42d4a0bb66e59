"""Training throughput (images/s, forward + backward + AdamW step) of every backbone on this machine.

Synthetic batches, so only the network is measured (decode and augmentation are measured by
``benchmarks/data_loading.py``). The baseline in the same run is timm's plain ``resnet18`` at
the same size, so figures from different machines can be compared by their ratio. Each backbone is
timed in the default (channels-first) layout and, as ``trainer.channels_last: true`` trains, with
weights and images in channels-last layout; ``NHWC/NCHW`` is that speed-up.

    python benchmarks/train_throughput.py [--sizes 128 224] [--batch 32] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKBONES = (
    "dermaresnet_se_tiny", "dermaresnet_se_small", "dermaresnet_se_18", "resnet50",
    "vit_small_patch16_224", "vit_base_patch16_224",
)


def _images_per_second(model, batch: int, size: int, steps: int, meta_dim: int | None = None,
                       channels_last: bool = False) -> float:
    import torch

    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    meta = torch.rand(batch, meta_dim) if meta_dim else None
    model.train()

    def step() -> None:
        out = model(x, meta) if meta_dim is not None else model(x)
        logits = out.diagnosis_logits if hasattr(out, "diagnosis_logits") else out
        loss = logits.float().logsumexp(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    """Print one line per backbone and size."""
    import timm
    import torch

    from backend.config import from_dict
    from backend.data.metadata import MetadataEncoder
    from backend.models.config import ModelConfig
    from backend.models.lesion_net import build_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.steps} timed steps, {args.threads} threads, fp32; baseline timm resnet18 "
          f"channels-first")
    print(f"{'backbone':<26}{'size':>6}{'NCHW img/s':>12}{'NHWC img/s':>12}{'NHWC/NCHW':>11}"
          f"{'resnet18 img/s':>16}{'NCHW/resnet18':>15}")
    for size in args.sizes:
        torch.manual_seed(0)
        baseline = _images_per_second(timm.create_model("resnet18", pretrained=False, num_classes=8),
                                      args.batch, size, args.steps)
        for name in args.backbones:
            rates = []
            for channels_last in (False, True):
                torch.manual_seed(0)
                net = build_model(from_dict(ModelConfig, {"backbone": name}), img_size=size,
                                  meta_dim=MetadataEncoder().dim)
                rates.append(_images_per_second(net, args.batch, size, args.steps, meta_dim=net.meta_dim,
                                                channels_last=channels_last))
            first, last = rates
            print(f"{name:<26}{size:>6}{first:>12.1f}{last:>12.1f}{last / first:>11.2f}"
                  f"{baseline:>16.1f}{first / baseline:>15.2f}")


if __name__ == "__main__":
    main()
