"""Memory soak: RSS growth over 500 predictions with Grad-CAM in one process, vs a predict-only baseline.

One process loads the bundled default model (``Predictor.from_checkpoint``) and feeds it
synthetic 600x450 JPEG uploads as ``(name, bytes)``, the way the dashboard does (decode on every
call). After a warm-up (allocator pools, oneDNN kernels, lazy imports), it measures:

* **baseline**: ``--n`` calls of ``predict`` alone: the growth a steady inference loop shows;
* **soak**: ``--n`` rounds of ``predict`` + ``explain`` (Grad-CAM, cycling through every class
  target and every head target, ``backend.inference.explain.HEAD_TARGETS``, so each hook path runs).

It prints the RSS (``psutil``) growth of each phase in MB after ``gc.collect()``, the RSS every
100 rounds, ms per round, and the soak's growth against the issue's target (< 50 MB) and against
the baseline. The machine's load average is printed with the figures: timings on a busy machine
are slow, the memory figures are not affected::

    python benchmarks/soak.py                 # 500 rounds on assets/models/default
    python benchmarks/soak.py --n 100 --checkpoint runs/x/version_0/ckpts/best.ckpt
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_MB = 50.0


def synthetic_uploads(n: int, width: int = 600, height: int = 450) -> list[tuple[str, bytes]]:
    """``n`` different dermoscopy-like JPEGs as ``(name, bytes)``: skin, a dark irregular blob, noise."""
    import numpy as np
    from PIL import Image

    out = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        rng = np.random.default_rng(i)
        cy, cx = rng.uniform(0.35, 0.65, 2) * (height, width)
        angle = np.arctan2(yy - cy, xx - cx)
        edge = rng.uniform(70, 130) + 15 * np.sin(3 * angle + rng.uniform(0, 6))
        lesion = np.clip((edge - np.hypot(yy - cy, xx - cx)) / 12, 0, 1)[..., None]
        img = np.array([215, 165, 145], np.float32) * (1 - lesion) + np.array([105, 65, 45], np.float32) * lesion
        img += rng.normal(0, 6, img.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append((f"synthetic_{i:03d}.jpg", buffer.getvalue()))
    return out


def rss_mb() -> float:
    """Resident set size of this process in MB (after a full garbage collection)."""
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def phase(name: str, n: int, step, trace_every: int = 100) -> tuple[float, float]:
    """Run ``step(i)`` ``n`` times; returns ``(RSS growth MB, ms per round)`` and prints the RSS trace."""
    start = rss_mb()
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
        if (i + 1) % trace_every == 0:
            print(f"  {name:<9} round {i + 1:>4}: RSS {rss_mb():8.1f} MB", flush=True)
    ms = (time.perf_counter() - t0) * 1000.0 / n
    return rss_mb() - start, ms


def run(args: argparse.Namespace) -> dict:
    """Warm up, measure the baseline and the soak, print and return the figures."""
    import torch

    from backend.data.schema import DIAGNOSES
    from backend.inference.explain import HEAD_TARGETS
    from backend.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    uploads = synthetic_uploads(args.images)
    targets = [*DIAGNOSES, *HEAD_TARGETS, None]

    def predict_only(i: int) -> None:
        predictor.predict([uploads[i % len(uploads)]])

    def predict_and_cam(i: int) -> None:
        item = uploads[i % len(uploads)]
        predictor.predict([item])
        predictor.explain(item, target=targets[i % len(targets)])

    print(f"model: {predictor.card.get('name')} ({args.checkpoint}), {args.images} synthetic 600x450 JPEGs, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    start = rss_mb()
    for i in range(args.warmup):
        predict_and_cam(i)
    warm = rss_mb()
    print(f"RSS at start {start:.1f} MB, after {args.warmup} warm-up rounds {warm:.1f} MB", flush=True)
    base_growth, base_ms = phase("baseline", args.n, predict_only)
    soak_growth, soak_ms = phase("soak", args.n, predict_and_cam)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    verdict = "ok" if soak_growth < TARGET_MB else "MISS"
    print(f"{'phase':<34}{'RSS growth MB':>15}{'ms/round':>10}")
    print(f"{'baseline: predict only':<34}{base_growth:>15.1f}{base_ms:>10.1f}")
    print(f"{'soak: predict + Grad-CAM':<34}{soak_growth:>15.1f}{soak_ms:>10.1f}")
    print(f"soak growth over {args.n} rounds: {soak_growth:.1f} MB (target < {TARGET_MB:g} MB: {verdict}); "
          f"soak - baseline {soak_growth - base_growth:+.1f} MB; final RSS {rss_mb():.1f} MB; "
          f"1-min load average {load:.1f}")
    return {"baseline_mb": base_growth, "soak_mb": soak_growth, "baseline_ms": base_ms, "soak_ms": soak_ms,
            "target_mb": TARGET_MB, "ok": soak_growth < TARGET_MB}


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit code 1 when the soak misses the target."""
    from backend.model_store import DEFAULT_MODEL_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_MODEL_DIR), help="bundle folder or .ckpt (default: %(default)s)")
    p.add_argument("--n", type=int, default=500, help="rounds per phase (default 500)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up rounds before measuring")
    p.add_argument("--images", type=int, default=50, help="distinct synthetic images cycled through")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the target machine has 2 cores)")
    return 0 if run(p.parse_args(argv))["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
