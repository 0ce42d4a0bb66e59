"""Where bundled models live and what a model folder holds, without importing torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "assets" / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "default"
CARD_FILE = "model_card.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model folder holds a loadable bundle, and why not when it does not."""

    path: Path
    available: bool
    name: str
    reason: str = ""


def describe_model_dir(path: str | Path) -> ModelStatus:
    """Check a bundle folder (weights + card) and read its name from the card.

    Args:
        path: Folder expected to hold ``model.safetensors`` and ``model_card.json``.

    Returns:
        The folder's status; ``reason`` says what is missing or malformed.
    """
    path = Path(path)
    if not path.is_dir():
        return ModelStatus(path, False, "", f"model folder {path} does not exist")
    missing = [f for f in (WEIGHTS_FILE, CARD_FILE) if not (path / f).is_file()]
    if missing:
        return ModelStatus(path, False, "", f"{path} lacks {', '.join(missing)}")
    try:
        card = json.loads((path / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return ModelStatus(path, False, "", f"{path / CARD_FILE} is not valid JSON: {err}")
    if not isinstance(card, dict):
        return ModelStatus(path, False, "", f"{path / CARD_FILE} must hold a JSON object")
    name = str(card.get("name", path.name))
    return ModelStatus(path, True, name)
