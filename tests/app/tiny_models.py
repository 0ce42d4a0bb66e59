"""Tiny model bundles for the dashboard tests (AppTest and the real-browser test).

:func:`tiny_models_dir` trains a seconds-long fusion model (images + age/sex/site) and an
image-only model on synthetic data with ``backend.training.run.fit``, exports both to bundles with
``backend.workflows.export.export_bundle`` in one models folder, and adds a corrupt ``broken.ckpt`` and an
``unsafe.ckpt`` (a pickle holding a non-tensor object, which ``weights_only`` loading refuses) beside
them. It builds once per pytest session (the folder lives under the session's base temp dir), so
the AppTest and the e2e fixtures share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.config import from_dict, read_yaml
from backend.training.config import ExperimentConfig
from backend.training.run import fit
from backend.workflows.export import export_bundle
from tests.conftest import REPO_ROOT, write_synthetic_dataset

FUSION = "tiny-fusion"
IMAGE_ONLY = "tiny-image-only"
BROKEN = "broken.ckpt"
UNSAFE = "unsafe.ckpt"


@dataclass(frozen=True)
class TinyModels:
    """Where the tiny models are.

    Attributes:
        models_dir: The models folder (``DERMALENS_MODELS_DIR``).
        fusion: Bundle of the metadata-fusion model (the default, ``DERMALENS_MODEL``).
        image_only: Bundle of the image-only model.
        broken: A ``.ckpt`` file that is not a checkpoint.
        unsafe: A ``.ckpt`` pickle that safe loading must refuse.
        data_dir: Synthetic data (``labels.csv`` + ``images/``) the models were trained on.
    """

    models_dir: Path
    fusion: Path
    image_only: Path
    broken: Path
    unsafe: Path
    data_dir: Path

    def env(self) -> dict[str, str]:
        """The environment variables that point the app at these models."""
        return {"DERMALENS_MODELS_DIR": str(self.models_dir), "DERMALENS_MODEL": str(self.fusion)}


def _cfg(csv: Path, out: Path, use_metadata: bool):

    base = read_yaml(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml")
    base["data"].update({"csv": str(csv), "img_dir": str(csv.parent / "images"), "img_size": 64, "batch_size": 8,
                         "use_metadata": use_metadata})
    base["trainer"].update({"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1})
    base["log_dir"] = str(out)
    base["experiment_name"] = "fusion" if use_metadata else "image_only"
    return from_dict(ExperimentConfig, base)


def build_tiny_models(root: Path) -> TinyModels:
    """Train and export the two tiny models under ``root`` (about 20-40 s on 2 busy CPU cores)."""

    data_dir = root / "data"
    csv = write_synthetic_dataset(data_dir, n=48, size=40)
    models = root / "models"
    bundles = {}
    for name, use_metadata, title in ((FUSION, True, "Tiny fusion"), (IMAGE_ONLY, False, "Tiny image-only")):
        result = fit(_cfg(csv, root / "runs", use_metadata), test=False)
        ckpt = result.best_ckpt or result.last_ckpt
        assert ckpt is not None and ckpt.is_file(), f"training left no checkpoint in {result.run_dir}"
        export_bundle(ckpt, models / name, name=title, version="test-1")
        bundles[name] = models / name
    (models / BROKEN).write_bytes(b"this is not a checkpoint")
    import datetime

    import torch

    torch.save({"state_dict": {}, "payload": datetime.date(2020, 1, 1)}, models / UNSAFE)
    return TinyModels(models, bundles[FUSION], bundles[IMAGE_ONLY], models / BROKEN, models / UNSAFE, data_dir)


def tiny_models_dir(tmp_path_factory) -> TinyModels:
    """The session's tiny models, built on first use (shared by every fixture that asks)."""
    root = tmp_path_factory.getbasetemp() / "dermalens_tiny_models"
    done = root / ".complete"
    if not done.is_file():
        build_tiny_models(root)
        done.write_text("ok\n")
    models = root / "models"
    return TinyModels(models, models / FUSION, models / IMAGE_ONLY, models / BROKEN, models / UNSAFE, root / "data")
