"""``Predictor``: images (+ optional patient metadata) in, everything a clinician sees out.

The one inference API of DermaLens; the Streamlit app, ``scripts/predict.py``, ``scripts/export.py``
and the benchmark all go through it::

    predictor = Predictor.from_checkpoint("assets/models/default")      # bundle folder or .ckpt
    [result] = predictor.predict(["lesion.jpg"], metadata=[{"age_approx": 55, "sex": "male"}])
    result.probabilities["MEL"], result.risk, result.traffic_light, result.flags
    heatmap = predictor.explain("lesion.jpg", target="MEL")            # (H, W) in [0, 1]
    picture = predictor.overlay(predictor.load("lesion.jpg")[1], heatmap, opacity=0.4)

Preprocessing is exactly training's eval transform, rebuilt from the description stored with the
model (``backend.data.transforms.build_eval_transform``); images are decoded with the project's
decoder at reduced size (``target_size`` = network input side) and hair is removed only when the
model was trained that way. The network runs in eval mode under ``torch.inference_mode``, CNNs in
channels_last memory format (both measurably faster on CPUs). Calibration divides the diagnosis
logits by the stored temperature; test-time augmentation averages the calibrated probabilities
and the thickness over the 8 flips/rotations in one batched pass (:mod:`backend.inference.tta`).
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from backend.data.hair import remove_hair
from backend.data.images import decode_image_bytes, load_image
from backend.data.metadata import MetadataEncoder
from backend.data.schema import DIAGNOSES, MALIGNANT_DIAGNOSES
from backend.data.transforms import build_eval_transform, check_preprocessing
from backend.errors import CheckpointError, ConfigError, ImageLoadError
from backend.inference import tta as tta_mod
from backend.inference.explain import ClassTarget, LesionCAM, ThicknessTarget, heatmap_to_image, overlay
from backend.inference.onnx_engine import open_engine
from backend.inference.quality import FeatureStats, QualityConfig, QualityFlag, image_flags
from backend.inference.risk import RiskConfig, risk_index, thickness_band, traffic_light
from backend.io.bundle import load_bundle
from backend.io.checkpoint import load_lesion_checkpoint
from backend.models.heads import ThicknessScaler

#: Metadata keys accepted per image, mapped to the lesion-table names.
METADATA_KEYS: dict[str, str] = {
    "age_approx": "age_approx", "age": "age_approx",
    "sex": "sex",
    "anatom_site_general": "anatom_site_general", "site": "anatom_site_general",
    "anatom_site": "anatom_site_general",
}
#: Grad-CAM targets besides the class names.
HEAD_TARGETS: tuple[str, ...] = ("thickness", "malignant")
_MALIGNANT = [i for i, d in enumerate(DIAGNOSES) if d in MALIGNANT_DIAGNOSES]


@dataclass
class Prediction:
    """Everything shown for one image.

    Attributes:
        image: The image's name (its path, the upload's file name, or ``image_<i>`` for arrays).
        probabilities: Calibrated probability of each diagnosis, in :data:`DIAGNOSES` order.
        malignant: P(MEL) + P(BCC) + P(SCC).
        benign: ``1 - malignant``.
        risk: Risk index in ``[0, 1]`` (``backend.inference.risk``).
        traffic_light: ``green``, ``yellow`` or ``red``.
        thickness_mm: Breslow thickness estimate in mm (meaningful only if the lesion is a melanoma).
        thickness_band: Band of ``thickness_mm`` (``in situ``, ``<0.8 mm``, ... ``>4 mm``).
        top_class: Most probable diagnosis.
        top_probability: Its probability.
        flags: Quality-gate flag codes (``blurred``, ``out_of_distribution``...); empty when none.
        flag_reasons: Code -> human-readable reason.
        metadata_used: Whether patient metadata was given and fed to the model.
        tta: Whether test-time augmentation was used.
        ood_distance: Feature distance from the training images (None without statistics).
    """

    image: str
    probabilities: dict[str, float]
    malignant: float
    benign: float
    risk: float
    traffic_light: str
    thickness_mm: float
    thickness_band: str
    top_class: str
    top_probability: float
    flags: list[str] = field(default_factory=list)
    flag_reasons: dict[str, str] = field(default_factory=dict)
    metadata_used: bool = False
    tta: bool = False
    ood_distance: float | None = None

    @property
    def reliable(self) -> bool:
        """False when the quality gate flagged the image (the prediction is still given)."""
        return not self.flags

    @property
    def thickness_relevant(self) -> bool:
        """Whether the thickness estimate applies (the top class is melanoma)."""
        return self.top_class == "MEL"

    def to_row(self) -> dict[str, Any]:
        """One row of ``scripts/predict.py`` output (see :data:`OUTPUT_COLUMNS`)."""
        row: dict[str, Any] = {"image": self.image}
        row.update({name: self.probabilities[name] for name in DIAGNOSES})
        row["UNK"] = 0.0
        row.update({
            "malignant": self.malignant, "risk": self.risk, "traffic_light": self.traffic_light,
            "thickness_mm": self.thickness_mm, "thickness_band": self.thickness_band, "flags": ";".join(self.flags),
        })
        return row


#: Columns of a batch-prediction CSV, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "image", *DIAGNOSES, "UNK", "malignant", "risk", "traffic_light", "thickness_mm", "thickness_band", "flags",
)


class RawOutputs(NamedTuple):
    """Network outputs of a batch after calibration (and TTA averaging).

    Attributes:
        probs: ``(B, 8)`` calibrated probabilities.
        logits: ``(B, 8)`` raw diagnosis logits of the unaugmented images (before temperature).
        thickness_mm: ``(B,)`` thickness estimate in mm.
        features: ``(B, D)`` pooled backbone features of the unaugmented images.
    """

    probs: np.ndarray
    logits: np.ndarray
    thickness_mm: np.ndarray
    features: np.ndarray


def _is_token_model(net: torch.nn.Module) -> bool:
    return getattr(net.backbone, "reshape_transform", None) is not None


class Predictor:
    """Turns images and optional patient metadata into :class:`Prediction` results and Grad-CAMs.

    Build it with :meth:`from_checkpoint`; the constructor takes the parts directly (tests, export).

    Args:
        net: A :class:`~backend.models.lesion_net.LesionNet`.
        preprocessing: The eval-transform description stored with the model.
        thickness_scaler: ``ThicknessScaler.to_dict()`` of the model.
        metadata_encoder: ``MetadataEncoder.to_dict()``, or None for an image-only model.
        temperature: Calibration temperature (> 0) dividing the diagnosis logits.
        feature_stats: Out-of-distribution statistics, or None to skip that check.
        card: The model card (a minimal one is made for checkpoints).
        risk: Risk weights and thresholds; default ``cfgs/inference/risk.yaml``.
        quality: Quality-gate thresholds.
        tta: Default for :meth:`predict`'s ``tta``.
        batch_size: Images decoded and run together.
    """

    #: Largest number of images (TTA variants included) in one forward pass.
    max_forward: int = 64

    def __init__(
        self,
        net: torch.nn.Module,
        preprocessing: dict[str, Any],
        thickness_scaler: dict[str, float] | None = None,
        metadata_encoder: dict[str, Any] | None = None,
        temperature: float = 1.0,
        feature_stats: FeatureStats | None = None,
        card: dict[str, Any] | None = None,
        risk: RiskConfig | None = None,
        quality: QualityConfig | None = None,
        tta: bool = False,
        batch_size: int = 32,
    ) -> None:

        try:
            self.preprocessing = dict(check_preprocessing(dict(preprocessing)))
        except ConfigError as err:
            raise CheckpointError(f"stored preprocessing is invalid: {err}") from None
        self.transform = build_eval_transform(self.preprocessing)
        self.img_size = int(self.preprocessing["img_size"])
        self.scaler = ThicknessScaler.from_dict(thickness_scaler or ThicknessScaler().to_dict())
        self.net = net.eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.channels_last = not _is_token_model(self.net)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.encoder = None
        if getattr(self.net, "use_metadata", False) and metadata_encoder is not None:
            self.encoder = MetadataEncoder.from_dict(metadata_encoder)
        self.temperature = float(temperature)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"calibration temperature must be a finite number > 0, got {temperature!r}")
        self.feature_stats = feature_stats
        self.risk = risk if risk is not None else RiskConfig.load()
        self.quality = quality or QualityConfig()
        self.tta = bool(tta)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._card = dict(card or {})
        self._lock = threading.RLock()
        #: ONNX Runtime forward pass (``backend.inference.onnx_engine``); None predicts in eager PyTorch.
        self.onnx_engine = None

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], engine: str = "auto", **kwargs: Any) -> Predictor:
        """Load a bundle folder (``model.safetensors`` + ``model_card.json``) or a Lightning ``.ckpt``.

        Checkpoints are read with ``torch.load(weights_only=True)`` and bundles with safetensors,
        so a file carrying pickled code is refused, never run.

        Args:
            path: Bundle folder or checkpoint file.
            engine: Forward pass of plain predictions: ``auto`` (ONNX Runtime when the bundle has a
                verified ``model.onnx`` and onnxruntime is installed, else PyTorch), ``torch`` or
                ``onnxruntime`` (required). Grad-CAM and TTA always run in PyTorch.
            **kwargs: Constructor options (``risk``, ``quality``, ``tta``, ``batch_size``,
                ``temperature`` to override the stored one).

        Raises:
            CheckpointError: Missing, unsafe, unreadable or mismatched model files.
        """
        path = Path(path)
        if path.is_dir():

            bundle = load_bundle(path)
            model, card = bundle.model, bundle.card
            stats = None
            if card.get("ood"):
                stats = FeatureStats.from_parts(card["ood"], {k: v.numpy() for k, v in bundle.extra_tensors.items()})
            kwargs.setdefault("temperature", bundle.temperature)
            kwargs.setdefault("feature_stats", stats)
            # The card's figures were measured with the bundle's own TTA setting: keep it by default.
            kwargs.setdefault("tta", bool((card.get("inference") or {}).get("tta", False)))
            # Thresholds chosen for this model on its validation split travel with the bundle.
            if card.get("risk") and card["risk"].get("chosen_on"):
                kwargs.setdefault("risk", RiskConfig.from_card(card["risk"]))
        elif path.is_file():
            model = load_lesion_checkpoint(path)
            card = {
                "name": path.stem, "version": "checkpoint", "source": str(path), "config": model.config,
                "classes": model.classes, "preprocessing": model.preprocessing,
                "thickness_scaler": model.thickness_scaler, "metadata_encoder": model.metadata_encoder,
                "calibration": {"method": "none (raw checkpoint)", "temperature": 1.0}, "ood": None,
            }
        else:
            raise CheckpointError(f"model not found: {path} (expected a bundle folder or a .ckpt file)")
        if list(model.classes) != list(DIAGNOSES):
            raise CheckpointError(f"{path}: classes {model.classes} differ from this code's {list(DIAGNOSES)}")
        predictor = cls(model.net, model.preprocessing, model.thickness_scaler, model.metadata_encoder, card=card,
                        **kwargs)
        if path.is_dir():
            predictor.onnx_engine = open_engine(engine, path, card, bundle.temperature)
        elif engine == "onnxruntime":
            raise CheckpointError(f"{path}: a training checkpoint has no ONNX model; export a bundle with --onnx")
        return predictor

    # -- properties --------------------------------------------------------------------------

    @property
    def card(self) -> dict[str, Any]:
        """The model card (name, version, classes, preprocessing, calibration, metrics, limitations...)."""
        card = dict(self._card)
        card["calibration"] = {**(card.get("calibration") or {}), "temperature": self.temperature}
        return card

    @property
    def uses_metadata(self) -> bool:
        """Whether the model reads age/sex/site (image-only models ignore given metadata)."""
        return self.encoder is not None

    @property
    def classes(self) -> tuple[str, ...]:
        """Diagnosis names in output order."""
        return DIAGNOSES

    # -- decoding and preprocessing --------------------------------------------------------

    def load(self, item: Any, index: int = 0) -> tuple[str, np.ndarray]:
        """Decode one input into ``(name, HxWx3 uint8 RGB)`` exactly as :meth:`predict` does.

        Accepts an RGB uint8 array, a file path, ``(name, bytes)``, ``(name, array)``, raw bytes or a
        file-like upload with ``.name`` (e.g. Streamlit's ``UploadedFile``).

        Raises:
            ImageLoadError: The image cannot be decoded (message names it and the reason).
            ConfigError: An array that is not HxWx3 uint8, or an unsupported input type.
        """
        if isinstance(item, np.ndarray):
            name, image = f"image_{index}", item
        elif isinstance(item, (str, os.PathLike)):
            name, image = str(item), load_image(item, target_size=self.img_size)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, payload = item
            if isinstance(payload, np.ndarray):
                image = payload
            elif isinstance(payload, (bytes, bytearray, memoryview)):
                image = decode_image_bytes(bytes(payload), name, target_size=self.img_size)
            else:
                raise ConfigError(f"{name}: expected bytes or an RGB array, got {type(payload).__name__}")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            name = f"upload_{index}"
            image = decode_image_bytes(bytes(item), name, target_size=self.img_size)
        elif hasattr(item, "read"):
            name = str(getattr(item, "name", f"upload_{index}"))
            data = item.getvalue() if hasattr(item, "getvalue") else item.read()
            image = decode_image_bytes(bytes(data), name, target_size=self.img_size)
        else:
            raise ConfigError(f"cannot predict on a {type(item).__name__}; pass an RGB uint8 array, a path or "
                              "(name, bytes)")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise ConfigError(f"{name}: expected an HxWx3 uint8 RGB image, got shape {image.shape} {image.dtype}")
        return name, image

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded images -> network input ``(B, 3, S, S)`` float32.

        Hair removal (only when the model was trained with it), then the eval transform.
        """
        if self.preprocessing["hair_removal"]:

            images = [remove_hair(img) for img in images]
        batch = torch.stack([self.transform(image=np.ascontiguousarray(img))["image"] for img in images])
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def encode_metadata(self, metadata: Sequence[dict[str, Any] | None] | None, n: int
                        ) -> tuple[np.ndarray | None, np.ndarray]:
        """Encoded metadata ``(n, dim)`` (None for image-only models) and a per-row "given" mask.

        A row without metadata (None, or every field blank) is encoded as "age, sex and site
        unknown", exactly as training encodes such rows, so a fusion model sees the same input for
        them at inference as it did in training and evaluation.

        Raises:
            ConfigError: Wrong number of rows, unknown keys or values outside the vocabulary.
        """
        used = np.zeros(n, dtype=bool)
        if metadata is not None and len(metadata) != n:
            raise ConfigError(f"{len(metadata)} metadata rows for {n} images")
        if self.encoder is None:
            return None, used
        rows = np.zeros((n, self.encoder.dim), dtype=np.float32)
        for i, entry in enumerate(metadata if metadata is not None else [None] * n):
            fields = {"age_approx": None, "sex": None, "anatom_site_general": None}
            for key, value in (entry or {}).items():
                if key not in METADATA_KEYS:
                    raise ConfigError(f"unknown metadata key {key!r}; expected age_approx, sex, anatom_site_general")
                fields[METADATA_KEYS[key]] = value
            used[i] = any(not _missing(v) for v in fields.values())
            rows[i] = self.encoder.encode(fields["age_approx"], fields["sex"], fields["anatom_site_general"])
        return rows, used

    # -- network ---------------------------------------------------------------------------

    def _net_forward(self, x: torch.Tensor, meta: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        out = self.net(x, meta)
        return out.diagnosis_logits.float(), out.thickness.float(), out.features.float()

    def _forward_group(self, x: torch.Tensor, meta: torch.Tensor | None, tta: bool) -> tuple[torch.Tensor, ...]:
        """Probabilities, identity logits, thickness (normalised) and identity features of one group."""
        if tta:
            xs = tta_mod.dihedral_batch(x)
            if self.channels_last:
                xs = xs.contiguous(memory_format=torch.channels_last)
            ms = tta_mod.repeat_rows(meta)
        else:
            xs, ms = x, meta
        parts = []
        for start in range(0, xs.shape[0], self.max_forward):
            stop = start + self.max_forward
            parts.append(self._net_forward(xs[start:stop], None if ms is None else ms[start:stop]))
        logits, thickness, features = (torch.cat(p, dim=0) for p in zip(*parts, strict=True))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if tta:
            return (tta_mod.merge_variants(probs), tta_mod.identity_rows(logits),
                    tta_mod.merge_variants(thickness), tta_mod.identity_rows(features))
        return probs, logits, thickness, features

    def forward(self, x: torch.Tensor, meta: np.ndarray | None = None, tta: bool = False) -> RawOutputs:
        """Run the network on a preprocessed batch.

        Args:
            x: ``(B, 3, S, S)`` preprocessed images.
            meta: ``(B, dim)`` encoded metadata (:meth:`encode_metadata`); None for image-only models,
                or to use the model's learned "no metadata" path for every row.
            tta: Average over the 8 flips and 90-degree rotations.
        """
        engine = self.onnx_engine
        if engine is not None and not tta and engine.temperature == self.temperature:
            with self._lock:
                return RawOutputs(*engine(x, meta))
        with self._lock, torch.inference_mode():
            m = None if meta is None else torch.from_numpy(np.asarray(meta, dtype=np.float32))
            probs, logits, thickness, features = self._forward_group(x, m, tta)
            thickness_mm = self.scaler.denormalise(thickness)
        return RawOutputs(probs.numpy().astype(np.float64), logits.numpy(), thickness_mm.numpy(), features.numpy())

    # -- prediction -------------------------------------------------------------------------

    def predict(self, images: Sequence[Any] | Any, metadata: Sequence[dict[str, Any] | None] | None = None,
                tta: bool | None = None) -> list[Prediction]:
        """Predict every image; one :class:`Prediction` per input, in order.

        Args:
            images: A list of RGB uint8 arrays, paths, ``(name, bytes)`` uploads (see :meth:`load`);
                a single one is accepted too.
            metadata: One dict per image (``age_approx``, ``sex``, ``anatom_site_general``; missing
                keys or None mean unknown), or None.
            tta: Average over the 8 flips/rotations; default the predictor's ``tta``.

        Raises:
            ImageLoadError: An image cannot be decoded.
            ConfigError: Bad metadata or input types.
        """
        if isinstance(images, (np.ndarray, str, os.PathLike, bytes)) or hasattr(images, "read") or (
            isinstance(images, tuple) and len(images) == 2 and isinstance(images[0], str)
            and isinstance(images[1], (bytes, bytearray, memoryview, np.ndarray))
        ):
            images = [images]
            metadata = [metadata] if isinstance(metadata, dict) else metadata
        images = list(images)
        if metadata is not None and len(metadata) != len(images):
            raise ConfigError(f"{len(metadata)} metadata rows for {len(images)} images")
        tta = self.tta if tta is None else bool(tta)
        results: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            decoded = [self.load(item, start + i) for i, item in enumerate(chunk)]
            meta_chunk = None if metadata is None else metadata[start : start + self.batch_size]
            results.extend(self.predict_decoded(decoded, meta_chunk, tta))
        return results

    def predict_decoded(self, decoded: Sequence[tuple[str, np.ndarray]],
                        metadata: Sequence[dict[str, Any] | None] | None = None, tta: bool = False
                        ) -> list[Prediction]:
        """Predict already decoded ``(name, image)`` pairs (one batch; see :meth:`load`)."""
        if not decoded:
            return []
        names = [name for name, _ in decoded]
        arrays = [image for _, image in decoded]
        meta, used = self.encode_metadata(metadata, len(arrays))
        raw = self.forward(self.preprocess(arrays), meta, tta)
        distances = None
        if self.feature_stats is not None and self.quality.ood_enabled:
            distances = self.feature_stats.distance(raw.features)
        results = []
        for i, name in enumerate(names):
            flags = image_flags(arrays[i], self.quality)
            dist = None if distances is None else float(distances[i])
            if dist is not None:
                ood = self.feature_stats.flag(dist)
                if ood is not None:
                    flags.append(ood)
            results.append(
                self._result(name, raw.probs[i], float(raw.thickness_mm[i]), flags, bool(used[i]), tta, dist)
            )
        return results

    def _result(self, name: str, probs: np.ndarray, thickness_mm: float, flags: list[QualityFlag], used: bool,
                tta: bool, dist: float | None) -> Prediction:
        probabilities = {c: float(p) for c, p in zip(DIAGNOSES, probs, strict=True)}
        malignant = float(min(max(sum(float(probs[i]) for i in _MALIGNANT), 0.0), 1.0))
        risk = float(risk_index(probs, self.risk))
        top = int(np.argmax(probs))
        return Prediction(
            image=name, probabilities=probabilities, malignant=malignant, benign=1.0 - malignant, risk=risk,
            traffic_light=traffic_light(risk, self.risk), thickness_mm=thickness_mm,
            thickness_band=thickness_band(thickness_mm), top_class=DIAGNOSES[top], top_probability=float(probs[top]),
            flags=[f.code for f in flags], flag_reasons={f.code: f.reason for f in flags}, metadata_used=used,
            tta=tta, ood_distance=dist,
        )

    # -- calibration and OOD statistics -------------------------------------------------------

    def raw_outputs(self, images: Sequence[Any], metadata: Sequence[dict[str, Any] | None] | None = None,
                    progress: bool = False, tta: bool = False) -> tuple[RawOutputs, list[int], list[str]]:
        """Network outputs over many images, skipping unreadable ones (for calibration, OOD fitting, evaluation).

        Args:
            images: Paths, bytes or arrays.
            metadata: One patient-metadata dict (or None) per image; None for no metadata at all.
            progress: Show a progress bar.
            tta: Average over the 8 flips/rotations (off for calibration and OOD fitting, which
                describe the plain forward pass).

        Returns:
            The outputs of the readable images, their indices in ``images``, and one message per
            skipped image.
        """
        parts: list[RawOutputs] = []
        kept: list[int] = []
        skipped: list[str] = []
        starts = range(0, len(images), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="images", unit="batch")
        for start in starts:
            decoded, meta_rows, rows = [], [], []
            for i in range(start, min(start + self.batch_size, len(images))):
                try:
                    decoded.append(self.load(images[i], i))
                except (ImageLoadError, ConfigError) as err:
                    skipped.append(str(err))
                    continue
                rows.append(i)
                meta_rows.append(None if metadata is None else metadata[i])
            if not decoded:
                continue
            meta, _ = self.encode_metadata(None if metadata is None else meta_rows, len(decoded))
            parts.append(self.forward(self.preprocess([img for _, img in decoded]), meta, tta=tta))
            kept.extend(rows)
        if not parts:
            empty = np.zeros((0, len(DIAGNOSES)))
            return RawOutputs(empty, empty, np.zeros(0), np.zeros((0, 0))), kept, skipped
        return RawOutputs(*(np.concatenate(p, axis=0) for p in zip(*parts, strict=True))), kept, skipped

    def fit_ood(self, images: Sequence[Any], percentile: float = 99.0) -> FeatureStats:
        """Fit and install out-of-distribution statistics on in-domain (training) images."""
        raw, _, _ = self.raw_outputs(images)
        self.feature_stats = FeatureStats.fit(raw.features, percentile=percentile)
        return self.feature_stats

    # -- explanation --------------------------------------------------------------------------

    def _cam_head_and_targets(self, target: str | int | None, n: int) -> tuple[str, list[Any] | None]:

        if target is None:
            return "diagnosis", None
        if isinstance(target, str) and target in HEAD_TARGETS:
            return target, [ThicknessTarget() for _ in range(n)]
        if isinstance(target, str):
            if target not in DIAGNOSES:
                raise ConfigError(f"unknown Grad-CAM target {target!r}; expected one of "
                                  f"{[*DIAGNOSES, *HEAD_TARGETS]} or None (predicted class)")
            target = DIAGNOSES.index(target)
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < len(DIAGNOSES):
            raise ConfigError(f"Grad-CAM class index must be in 0..{len(DIAGNOSES) - 1}, got {target!r}")
        return "diagnosis", [ClassTarget(int(target)) for _ in range(n)]

    def explain_batch(self, images: Sequence[Any], target: str | int | None = None,
                      metadata: Sequence[dict[str, Any] | None] | None = None) -> list[np.ndarray]:
        """Grad-CAM heatmaps, one ``(H, W)`` float32 array in ``[0, 1]`` per image at its decoded size.

        Args:
            images: As for :meth:`predict` (arrays keep their size; paths and uploads are decoded
                like :meth:`load`, i.e. at reduced size when large).
            target: A diagnosis name or index, ``"thickness"`` (the regression output),
                ``"malignant"`` (log-odds of P(malignant)) or None (each image's predicted class).
            metadata: As for :meth:`predict`.
        """
        decoded = [self.load(item, i) for i, item in enumerate(images)]
        if not decoded:
            return []
        n = len(decoded)
        head, targets = self._cam_head_and_targets(target, n)
        meta, _ = self.encode_metadata(metadata, n)
        x = self.preprocess([img for _, img in decoded])
        with self._lock, LesionCAM(self.net, head=head, meta=None if meta is None else torch.from_numpy(meta)) as cam:
            cams = cam(x, targets)
        return [heatmap_to_image(c, img.shape, self.img_size) for c, (_, img) in zip(cams, decoded, strict=True)]

    def explain(self, image: Any, target: str | int | None = None, metadata: dict[str, Any] | None = None
                ) -> np.ndarray:
        """Grad-CAM heatmap of one image (see :meth:`explain_batch`)."""
        return self.explain_batch([image], target, None if metadata is None else [metadata])[0]

    @staticmethod
    def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
        """Heatmap blended over the image (``backend.inference.explain.overlay``)."""
        return overlay(image, heatmap, opacity)


def _missing(value: Any) -> bool:
    """None, NaN, pandas NA or a blank/"unknown" string."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "unknown", "nan", "na")
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (for overlays written to disk or served by the app)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
