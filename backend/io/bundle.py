"""Model bundles: the folder a trained model ships in (``model.safetensors`` + ``model_card.json``).

Layout::

    <bundle>/
        model.safetensors   the LesionNet state dict (keys as in ``LesionNet.state_dict()``) plus
                            optional extra tensors under their own prefix (``ood_stats.mean``...)
        model_card.json     everything else, plain JSON (see :func:`save_bundle`)
        model.onnx          optional ONNX export (``backend.io.onnx``)

The card holds the experiment config (the model is rebuilt from its ``model`` section), the class
order, the eval preprocessing, the thickness scaler, the metadata encoder, the calibration
temperature, a summary of the out-of-distribution statistics, validation metrics, intended use
and limitations, name, version and creation time, and the SHA-256 of the weights file: a bundle
whose weights and card do not belong together is refused. Safetensors holds tensors only and the
card is JSON, so loading a bundle never executes code.

Re-exporting over an existing bundle never leaves a half bundle, whenever the writer is killed:
each file is written atomically (temporary file + fsync + ``os.replace``), and the two files change
in a journaled order: the new card is first written beside the old one as
``model_card.json.pending``, then the weights are replaced, then the pending card replaces the
card. A reader that finds weights matching the pending card rather than the card (the writer died
between the last two steps) uses the pending card, so it always gets either the old bundle or the
new one, whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from backend.config import from_dict
from backend.data.schema import DIAGNOSES
from backend.errors import CheckpointError, ConfigError
from backend.files import atomic_write_bytes, atomic_write_text, sha256_file
from backend.io.checkpoint import LoadedModel
from backend.model_store import CARD_FILE, WEIGHTS_FILE
from backend.models.lesion_net import build_experiment_model
from backend.training.config import ExperimentConfig

BUNDLE_FORMAT = "dermalens-bundle"
BUNDLE_FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
#: The next card while a bundle is being rewritten (see the module docstring).
PENDING_CARD_FILE = CARD_FILE + ".pending"
#: Card keys every bundle must have.
REQUIRED_CARD_KEYS: tuple[str, ...] = (
    "format", "format_version", "name", "version", "created", "weights_file", "weights_sha256", "config",
    "classes", "preprocessing", "thickness_scaler", "metadata_encoder", "calibration",
)

DEFAULT_INTENDED_USE = (
    "Decision support for clinicians triaging dermoscopic images of single skin lesions: class "
    "probabilities over 8 diagnoses (MEL, NV, BCC, AK, BKL, DF, VASC, SCC), a derived malignancy "
    "probability, a risk traffic light, a Breslow thickness estimate for melanomas and Grad-CAM "
    "heatmaps. Not a diagnosis: every result is to be interpreted by a qualified clinician."
)
DEFAULT_LIMITATIONS: tuple[str, ...] = (
    "Trained on public dermoscopy collections (ISIC, HAM10000, Derm7pt) dominated by fair skin types; "
    "accuracy on darker skin, on clinical (non-dermoscopic) photographs and on other devices is unknown.",
    "Diagnoses outside the 8 classes (UNK) are not predicted; such lesions get the closest known class.",
    "The thickness estimate is only meaningful for melanoma and is coarse; it never replaces histopathology.",
    "Probabilities are calibrated on the validation split (temperature scaling, with one offset per "
    "diagnosis where the card says so); calibration may not transfer to other populations, where "
    "diagnoses are more or less common.",
    "Images flagged by the quality gate (blurred, dark, not skin, out of distribution) still get a "
    "prediction, which is unreliable.",
)


@dataclass
class LoadedBundle:
    """A bundle read back: the model, its card and the tensors stored beside the weights.

    Attributes:
        model: Network (eval mode) and what inference needs, as for a checkpoint.
        card: The model card.
        extra_tensors: Non-network tensors of the weights file, by full key (``ood_stats.mean``...).
    """

    model: LoadedModel
    card: dict[str, Any]
    extra_tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        """Calibration temperature (1.0 when uncalibrated)."""
        return float((self.card.get("calibration") or {}).get("temperature", 1.0))


def _jsonable(value: Any) -> Any:
    """Numpy scalars/arrays and paths to plain JSON values; NaN/inf to None (JSON has neither)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def save_bundle(
    out_dir: str | Path,
    model: LoadedModel,
    *,
    name: str,
    version: str = "1",
    temperature: float = 1.0,
    calibration: dict[str, Any] | None = None,
    ood: dict[str, Any] | None = None,
    extra_tensors: dict[str, Any] | None = None,
    validation_metrics: dict[str, Any] | None = None,
    intended_use: str = DEFAULT_INTENDED_USE,
    limitations: list[str] | tuple[str, ...] = DEFAULT_LIMITATIONS,
    extra_card: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder from a loaded model.

    Args:
        out_dir: Bundle folder (created; existing bundle files are replaced atomically).
        model: The network and its inference metadata (e.g. from ``load_lesion_checkpoint``).
        name: Model name shown in the app.
        version: Model version string.
        temperature: Calibration temperature (> 0) applied to the diagnosis logits.
        calibration: Extra calibration facts (split fitted on, ECE before/after...).
        ood: Summary of the out-of-distribution statistics (``FeatureStats.summary()``).
        extra_tensors: Tensors stored beside the weights (``FeatureStats.tensors()``); keys must
            not clash with the network's.
        validation_metrics: Scalar metrics on the validation split.
        intended_use: Intended-use statement.
        limitations: Known limitations.
        extra_card: More card entries (e.g. ``risk``, ``onnx``); they may not replace required keys.

    Returns:
        The bundle folder.

    Raises:
        CheckpointError: On a bad temperature or tensor keys that clash with the network's.
    """
    import numpy as np
    import torch
    from safetensors.torch import save as safetensors_save

    if not (temperature > 0 and np.isfinite(temperature)):
        raise CheckpointError(f"calibration temperature must be a finite number > 0, got {temperature}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.net.state_dict().items()}
    for key, value in (extra_tensors or {}).items():
        if key in tensors:
            raise CheckpointError(f"extra tensor '{key}' clashes with a network weight of the same name")
        tensors[key] = torch.as_tensor(np.asarray(value)).contiguous()
    blob = safetensors_save(tensors, metadata={"format": BUNDLE_FORMAT})

    card: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "version": str(version),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(model.source),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "config": model.config,
        "classes": list(model.classes),
        "preprocessing": model.preprocessing,
        "thickness_scaler": model.thickness_scaler,
        "metadata_encoder": model.metadata_encoder,
        "calibration": {"method": "temperature scaling", **(calibration or {}), "temperature": float(temperature)},
        "ood": ood,
        "validation_metrics": validation_metrics or {},
        "intended_use": intended_use,
        "limitations": list(limitations),
    }
    for key, value in (extra_card or {}).items():
        if key in REQUIRED_CARD_KEYS:
            raise CheckpointError(f"extra card entry '{key}' would replace a required bundle key")
        card[key] = value
    # Journaled swap: pending card, then weights, then card (a reader rolls forward in between).
    pending = out / PENDING_CARD_FILE
    atomic_write_text(pending, _card_text(card))
    atomic_write_bytes(out / WEIGHTS_FILE, blob)
    os.replace(pending, out / CARD_FILE)
    return out


def _card_text(card: dict[str, Any]) -> str:
    return json.dumps(_jsonable(card), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_card(bundle_dir: str | Path, card: dict[str, Any]) -> Path:
    """Atomically (re)write a bundle's ``model_card.json`` (same weights; see :func:`save_bundle` for new ones)."""
    return atomic_write_text(Path(bundle_dir) / CARD_FILE, _card_text(card))


def read_card(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and check a bundle's model card (not the weights).

    Raises:
        CheckpointError: Missing folder or file, invalid JSON, another format, or missing keys.
    """
    path = Path(bundle_dir)
    card_path = path / CARD_FILE
    if not path.is_dir():
        raise CheckpointError(f"model bundle folder not found: {path}")
    if not card_path.is_file():
        raise CheckpointError(f"{path}: not a model bundle ({CARD_FILE} is missing)")
    return _parse_card(card_path)


def _parse_card(card_path: Path) -> dict[str, Any]:
    """Read and check one card file (``model_card.json`` or its pending successor)."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{card_path}: not valid JSON: {err}") from None
    if not isinstance(card, dict) or card.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{card_path}: not a DermaLens model card (format must be '{BUNDLE_FORMAT}')")
    if card.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise CheckpointError(f"{card_path}: bundle format version {card.get('format_version')!r} is not supported "
                              f"(this code reads version {BUNDLE_FORMAT_VERSION})")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise CheckpointError(f"{card_path}: missing keys {missing}")
    return card


def load_bundle(bundle_dir: str | Path) -> LoadedBundle:
    """Rebuild the network of a bundle and check that weights and card belong together.

    Raises:
        CheckpointError: Bad card, missing or altered weights file, weights that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file


    path = Path(bundle_dir)
    card = read_card(path)
    weights_path = path / str(card["weights_file"])
    if not weights_path.is_file():
        raise CheckpointError(f"{path}: weights file {weights_path.name} is missing")
    digest = sha256_file(weights_path)
    pending = path / PENDING_CARD_FILE
    if digest != card["weights_sha256"] and pending.is_file():
        # A re-export died after replacing the weights, before replacing the card: its card is the pending one.
        try:
            successor = _parse_card(pending)
        except CheckpointError:
            successor = {}
        if successor.get("weights_sha256") == digest and successor.get("weights_file") == card["weights_file"]:
            card = successor
    if digest != card["weights_sha256"]:
        raise CheckpointError(f"{weights_path}: SHA-256 does not match the model card; the weights were changed "
                              "or belong to another bundle")
    if list(card["classes"]) != list(DIAGNOSES):
        raise CheckpointError(f"{path}: classes {card['classes']} differ from this code's {list(DIAGNOSES)}")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {err}") from None
    try:
        cfg = from_dict(ExperimentConfig, card["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path / CARD_FILE}: embedded config is invalid: {err}") from None
    cfg.model.drop_start_weights()  # the saved weights replace any start point; nothing is downloaded
    net = build_experiment_model(cfg.model, cfg.data, card["metadata_encoder"])
    own = set(net.state_dict())
    weights = {k: v for k, v in state.items() if k in own}
    extra = {k: v for k, v in state.items() if k not in own}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights_path}: weights do not fit the card's model config: {len(missing)} missing "
                              f"(e.g. {missing[:3]})")
    net.eval()
    loaded = LoadedModel(
        net=net, config=card["config"], classes=list(card["classes"]),
        thickness_scaler=dict(card["thickness_scaler"]), metadata_encoder=card["metadata_encoder"],
        preprocessing=dict(card["preprocessing"]), source=path,
    )
    return LoadedBundle(model=loaded, card=card, extra_tensors=extra)
