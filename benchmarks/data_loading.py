"""Decode + augment throughput on real images: DermaLens pipeline vs a plain PIL + torchvision baseline.

Prints images/s for the training and eval pipelines at 128 and 224 px, and the same work done the
naive way (``PIL.Image.open(...).convert("RGB")`` at full size + torchvision transforms) in the
same run, with the ratio. Single process, so the figure is per DataLoader worker.

    python benchmarks/data_loading.py [--data ../shared/data] [--n 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _throughput(fn, paths: list[Path], repeats: int = 2) -> float:
    fn(paths[0])  # warm-up (imports, caches)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        best = max(best, len(paths) / (time.perf_counter() - start))
    return best


def main() -> None:
    """Run the benchmark and print one line per configuration."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from backend.data.config import DataConfig
    from backend.data.images import load_image
    from backend.data.transforms import build_eval_transform, build_train_transform, preprocessing_dict

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--n", type=int, default=300, help="images per measurement")
    args = parser.parse_args()
    images = sorted((Path(args.data) / "images").glob("*.jpg"))
    if not images:
        sys.exit(f"no images under {args.data}/images: point --data at a folder with images/*.jpg")
    step = max(1, len(images) // args.n)
    paths = images[::step][: args.n]
    torch.set_num_threads(1)
    print(f"{len(paths)} real images from {args.data} (sizes as stored), 1 process, 1 thread")
    print(f"{'pipeline':<34}{'size':>6}{'ours img/s':>12}{'baseline img/s':>16}{'ratio':>8}")
    for size in (128, 224):
        cfg = DataConfig(img_size=size, color_constancy=True)
        ours_train, ours_eval = build_train_transform(cfg), build_eval_transform(preprocessing_dict(cfg))
        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        base_train = T.Compose([T.RandomResizedCrop(size, scale=(0.4, 1.0)), T.RandomHorizontalFlip(),
                                T.RandomVerticalFlip(), T.ColorJitter(0.2, 0.2, 0.2, 0.05), T.ToTensor(), norm])
        base_eval = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), norm])
        for name, ours, base in (("train (decode+augment)", ours_train, base_train),
                                 ("eval (decode+resize+normalise)", ours_eval, base_eval)):
            ours_rate = _throughput(lambda p, t=ours, s=size: t(image=load_image(p, target_size=s))["image"], paths)
            base_rate = _throughput(lambda p, t=base: t(Image.open(p).convert("RGB")), paths)
            print(f"{name:<34}{size:>6}{ours_rate:>12.1f}{base_rate:>16.1f}{ours_rate / base_rate:>8.2f}")


if __name__ == "__main__":
    main()
