"""Shared fixtures: the real development data (when present) and tiny synthetic images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_PRETRAINED = REPO_ROOT.parent / "shared" / "pretrained"
SHARED_WEIGHTS = SHARED_PRETRAINED / "mobilenetv2_100_imagenet_folded.safetensors"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dermoscopy data folder; skips the test with a reason when it is absent."""
    if not (SHARED_DATA / "labels.csv").is_file() or not (SHARED_DATA / "images").is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (labels.csv + images/): it sits beside the repo "
            "only on development and CI machines"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """The ImageNet MobileNetV2 start weights; skips the test with a reason when they are absent."""
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"ImageNet MobileNetV2 weights not found at {SHARED_WEIGHTS}: they sit beside the repo "
                    "only on development and CI machines")
    return SHARED_WEIGHTS


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests.

    On a busy 2-core machine, two OpenMP threads that wait for each other at every operator make
    small CPU models 10-20x slower than one thread; these tests measure correctness, not speed.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator so synthetic data is the same in every run."""
    return np.random.default_rng(0)


def make_lesion_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A skin-coloured square with a darker blob: a tiny stand-in for a dermoscopic image."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    radius = rng.uniform(size * 0.15, size * 0.3)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    img = np.empty((size, size, 3), np.uint8)
    img[...] = (np.array([220, 170, 150]) + rng.normal(0, 6, (size, size, 3))).clip(0, 255)
    img[blob] = (np.array([110, 70, 50]) + rng.normal(0, 6, (int(blob.sum()), 3))).clip(0, 255)
    return img


def png_bytes(width: int, height: int, *, rows: bool = True) -> bytes:
    """A 1-bit greyscale PNG of zeros, written by hand so a huge one stays cheap (~10 KB per 80 megapixels).

    With ``rows=False`` only the header and the start of the pixel stream are written: enough for
    the header to be read, not for the pixels to be decoded.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if rows:
        comp = zlib.compressobj(9)
        row = bytes(1 + (width + 7) // 8)
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
        out += chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    else:
        out += chunk(b"IDAT", b"\x78\x01")  # a zlib stream that stops after its header
    return out


def write_synthetic_dataset(root: Path, n: int = 48, size: int = 40, seed: int = 0) -> Path:
    """Write ``n`` tiny lesion PNGs and a generic ``labels.csv`` covering every diagnosis.

    Melanomas alternate between an exact thickness, a band and no thickness; ages, sexes and
    sites cycle with some blanks, so metadata encoding and the interval loss are exercised.

    Returns:
        The path of ``labels.csv`` (images are in ``root / "images"``).
    """
    import pandas as pd
    from PIL import Image

    from backend.data.schema import ALL_DIAGNOSES, ANATOM_SITES, MALIGNANT_DIAGNOSES

    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        diagnosis = ALL_DIAGNOSES[i % len(ALL_DIAGNOSES)]
        name = f"SYN_{i:04d}.png"
        Image.fromarray(make_lesion_image(rng, size)).save(img_dir / name)
        thickness, lo, hi = "", "", ""
        if diagnosis == "MEL":
            kind = (i // len(ALL_DIAGNOSES)) % 3
            if kind == 0:
                thickness = f"{rng.uniform(0.0, 3.0):.2f}"
            elif kind == 1:
                lo, hi = "0.76", "1.5"
        rows.append({
            "image": name,
            "diagnosis": diagnosis,
            "label": int(diagnosis in MALIGNANT_DIAGNOSES),
            "thickness": thickness,
            "thickness_lo_mm": lo,
            "thickness_hi_mm": hi,
            "age_approx": "" if i % 7 == 0 else 20 + (i * 5) % 60,
            "sex": ["male", "female", ""][i % 3],
            "anatom_site_general": "" if i % 5 == 0 else ANATOM_SITES[i % len(ANATOM_SITES)],
            "lesion_id": f"L{i // 2}",
            "patient_id": f"P{i // 4}",
        })
    csv = root / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> list:
    """The media file managers of AppTest runs (what download buttons serve); read with :func:`download_file`."""
    import streamlit.testing.v1.app_test as app_test_module

    managers: list = []

    class Recording(app_test_module.MediaFileManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            managers.append(self)

    monkeypatch.setattr(app_test_module, "MediaFileManager", Recording)
    return managers


def download_file(at, media: list, key: str) -> Any:
    """The file (``.filename``, ``.content``) the download button ``key`` serves, built as the server would."""
    button = next(b for b in at.get("download_button") if b.key == key).proto
    manager = media[-1]
    url = manager.execute_deferred(button.deferred_file_id) if button.deferred_file_id else button.url
    return manager.read_file(Path(url).stem)


def nan_loss_at_step(monkeypatch: pytest.MonkeyPatch, module_cls: type, step: int) -> None:
    """Make ``module_cls.training_step`` return a NaN loss at optimiser step ``step`` (a numerical blow-up)."""
    original = module_cls.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == step else loss

    monkeypatch.setattr(module_cls, "training_step", poisoned)
