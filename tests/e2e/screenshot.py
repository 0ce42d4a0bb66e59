"""Screenshot of the dashboard with a Grad-CAM overlay, for the README (``docs/dashboard.png``).

    python -m tests.e2e.screenshot --out docs/dashboard.png                  # default model, synthetic images
    python -m tests.e2e.screenshot --model runs/.../best.ckpt --images a.jpg b.jpg

The default model is ``assets/models/default``; when it does not exist yet a tiny bundle is trained
on synthetic data in a temporary folder (about 30 s) and the screenshot says so in its sidebar.
Without ``--images`` the pictures are synthetic lesions drawn here: the real development images
(``../shared/data``) must never be copied into the repository, not even inside a screenshot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.e2e import driver


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Noise in [0, 1] with blobs about ``size / scale`` px wide."""
    from PIL import Image

    small = (rng.random((scale, scale)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255


def synthetic_lesion(seed: int, size: int = 384) -> np.ndarray:
    """A dermoscopy-like RGB picture: skin, an irregular pigmented lesion with a darker network, hairs."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    cy, cx = rng.uniform(-0.06, 0.06, 2)
    radius, angle = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    skin = np.array([222, 172, 150], np.float32) + 14 * (_smooth_noise(rng, size, 6)[..., None] - 0.5)
    skin = skin * (1.0 - 0.55 * np.clip(np.hypot(yy, xx) - 0.36, 0, None) / 0.35)[..., None]  # dermoscope vignette
    border = 0.21 + sum(2 * rng.uniform(0.004, 0.022) / k * np.sin(k * angle + rng.uniform(0, 6.3))
                        for k in range(2, 6))
    border = border + 0.05 * (_smooth_noise(rng, size, 10) - 0.5)
    weight = np.clip((border - radius) / 0.025, 0, 1)  # soft edge
    depth = np.clip(1.0 - radius / np.maximum(border, 1e-3), 0, 1)
    tone = _smooth_noise(rng, size, 12)
    brown = np.array([165, 105, 78], np.float32) - (55 * depth + 45 * tone)[..., None]
    net = _smooth_noise(rng, size, 48)
    brown = brown * (1.0 - 0.35 * (net > 0.62))[..., None]
    veil = np.clip(1.0 - np.hypot(yy - cy - rng.uniform(-0.05, 0.05), xx - cx) / 0.07, 0, 1) * 0.45
    brown = brown * (1 - veil[..., None]) + np.array([95, 100, 125], np.float32) * veil[..., None]
    picture = skin * (1 - weight[..., None]) + brown * weight[..., None]
    image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 5)):  # hairs: gentle curves across the field
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        bend = rng.uniform(-60, 60)
        points = []
        for t in np.linspace(0, 1, 30):
            points.append((x0 + (x1 - x0) * t + bend * 4 * t * (1 - t), y0 + (y1 - y0) * t))
        draw.line(points, fill=(60, 42, 36), width=2, joint="curve")
    return np.asarray(image)


def main(argv: list[str] | None = None) -> int:
    """Start the app, upload images, switch Grad-CAM on and save a screenshot."""
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/dashboard.png", help="PNG to write (default docs/dashboard.png)")
    parser.add_argument("--model", help="bundle folder or .ckpt (default assets/models/default, else a tiny bundle)")
    parser.add_argument("--images", nargs="*", help="images to upload (default: three synthetic lesions)")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)

    from backend.model_store import DEFAULT_MODEL_DIR, describe_model_dir

    with tempfile.TemporaryDirectory(prefix="dermalens_shot_") as tmp:
        work = Path(tmp)
        model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
        if args.model is None and not describe_model_dir(model).available:
            from tests.app.tiny_models import build_tiny_models

            print(f"{model} does not exist yet: training a tiny bundle for the screenshot", file=sys.stderr)
            model = build_tiny_models(work / "tiny").fusion
        images = [Path(p) for p in args.images or []]
        if not images:
            for seed in range(3):
                images.append(work / f"lesion_{seed + 1}.png")
                Image.fromarray(synthetic_lesion(seed + 3)).save(images[-1])
        env = {"DERMALENS_MODEL": str(model), "DERMALENS_MODELS_DIR": str(model.parent)}
        with driver.streamlit_server(env, work / "streamlit.log") as url, \
                driver.browser_page(args.width, args.height) as page:
            driver.open_app(page, url)
            driver.upload(page, images)
            page.wait_for_selector(driver.PLOTLY, timeout=60_000)
            driver.show_grad_cam(page)
            driver.wait_idle(page)
            page.wait_for_timeout(1500)  # let plotly and images settle
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
