"""Training-step speed of each backbone: forward + backward images/s on the CPU, vs a LesionNet on timm ResNet-18.

Each model is the full LesionNet (backbone + metadata branch + heads, as ``build_model`` makes it)
in train mode; one step is a forward pass of a random batch with metadata and a backward pass of
a scalar loss (no optimiser step). After one warm-up step, steps repeat until ``--min_time``
seconds have passed (at least 2, at most ``--max_steps``) and the median step time gives the
rate (robust to a step slowed by other work on the machine). The same LesionNet on a timm ResNet-18
backbone runs in the same process as the baseline, so the ratio column compares models on the same machine and load.

    python benchmarks/model_forward.py                       # all backbones, 128 and 224 px, batch 8
    python benchmarks/model_forward.py --backbones dermaresnet_se_18 vit_small_patch16_224 --sizes 224
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = "resnet18"
DEFAULT_BACKBONES = (
    "dermaresnet_se_tiny", "dermaresnet_se_18", "resnet18", "resnet50", "vit_small_patch16_224", "vit_base_patch16_224",
)


def step_rate(backbone: str, size: int, batch: int, min_time: float, max_steps: int) -> tuple[float, int, float]:
    """Images/s of forward+backward, the number of timed steps and the parameter count (millions)."""
    import torch

    from backend.config import from_dict
    from backend.data.metadata import MetadataEncoder
    from backend.models.config import ModelConfig
    from backend.models.lesion_net import build_model

    torch.manual_seed(0)
    net = build_model(from_dict(ModelConfig, {"backbone": backbone}), img_size=size,
                      meta_dim=MetadataEncoder().dim).train()
    images = torch.randn(batch, 3, size, size)
    meta = torch.rand(batch, net.meta_dim)

    def one_step() -> None:
        out = net(images, meta)
        (out.diagnosis_logits.logsumexp(dim=1).mean() + out.thickness.pow(2).mean()).backward()
        net.zero_grad(set_to_none=True)

    one_step()  # warm-up: allocator, oneDNN kernel selection
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_steps and (len(times) < 2 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in net.backbone.parameters()) / 1e6
    return batch / statistics.median(times), len(times), params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min_time", type=float, default=3.0, help="seconds of timed steps per measurement")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    backbones = [BASELINE] + [b for b in args.backbones if b != BASELINE]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"forward+backward, batch {args.batch}, CPU, float32; ratio = images/s / {BASELINE} images/s at that size\n")
    print(f"{'backbone':<24}{'params(M)':>10}{'px':>6}{'img/s':>10}{'ratio':>8}{'steps':>7}")
    results, baseline_rate = [], {}
    total = time.perf_counter()
    for size in args.sizes:
        for backbone in backbones:
            rate, steps, params = step_rate(backbone, size, args.batch, args.min_time, args.max_steps)
            gc.collect()  # free the previous model before building the next
            baseline_rate.setdefault(size, rate)
            ratio = rate / baseline_rate[size]
            results.append({"backbone": backbone, "size": size, "batch": args.batch, "images_per_s": rate,
                            "ratio_vs_resnet18": ratio, "timed_steps": steps, "params_m": params})
            print(f"{backbone:<24}{params:>10.2f}{size:>6}{rate:>10.2f}{ratio:>8.2f}{steps:>7}", flush=True)
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
