"""``Predictor``: images (+ optional patient metadata) in, everything a clinician sees out.

The one inference API of DermaLens; the Streamlit app, ``scripts/predict.py``, ``scripts/export.py``,
``backend.evaluation`` and the benchmark all go through it::

    predictor = Predictor.from_checkpoint("assets/models/default")      # bundle folder or .ckpt
    [result] = predictor.predict(["lesion.jpg"], metadata=[{"age_approx": 55, "sex": "male"}])
    result.probabilities["MEL"], result.risk, result.traffic_light, result.flags
    prepared = predictor.prepare("lesion.jpg")                         # decoded once...
    [result] = predictor.predict(prepared)                             # ...preprocessed once...
    heatmap = predictor.explain(prepared, target="MEL")                # ...and reused: (H, W) in [0, 1]
    picture = predictor.overlay(prepared.image, heatmap, opacity=0.4)
    for batch in predictor.iter_outputs(paths, metadata, num_workers=2):   # many images, DataLoader workers
        batch.predictions, batch.raw.features, batch.failures

This module is the core: loading (bundle or checkpoint, ONNX Runtime or PyTorch), the forward pass
with calibration and test-time augmentation, the batched path and Grad-CAM. Inputs and their
decoding live in :mod:`backend.inference.inputs`, the DataLoader dataset in
:mod:`backend.inference.batches`, the result records in :mod:`backend.inference.records`.

Preprocessing is exactly training's eval transform, rebuilt from the description stored with the
model (``backend.data.transforms.build_eval_transform``); images are decoded with the project's
decoder at reduced size (``target_size`` = network input side) and hair is removed only when the
model was trained that way. The network runs in eval mode under ``torch.inference_mode``, CNNs in
channels_last memory format (both measurably faster on CPUs). Calibration divides the diagnosis
logits by the stored temperature; test-time augmentation averages the calibrated probabilities
and the thickness over the 8 flips/rotations in one batched pass (:mod:`backend.inference.tta`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from backend.data.metadata import MetadataEncoder
from backend.data.schema import DIAGNOSES
from backend.data.transforms import check_preprocessing
from backend.errors import CheckpointError, ConfigError
from backend.inference import tta as tta_mod
from backend.inference.batches import InputBatch, InputDataset, OutputBatch, collate_inputs
from backend.inference.explain import LesionCAM, cam_targets, heatmap_to_image, overlay
from backend.inference.inputs import PreparedInput, Preprocessor, encode_metadata, is_single_input, prepare_input
from backend.inference.onnx_engine import open_engine
from backend.inference.quality import FeatureStats, QualityConfig
from backend.inference.records import OUTPUT_COLUMNS, Prediction, RawOutputs
from backend.inference.risk import RiskConfig
from backend.io.bundle import load_bundle
from backend.io.checkpoint import load_lesion_checkpoint
from backend.metrics.calibration import balanced_decision_scores
from backend.models.heads import ThicknessScaler

#: Re-exported: the records and inputs callers import from here.
__all__ = ["OUTPUT_COLUMNS", "Prediction", "Predictor", "PreparedInput", "RawOutputs"]


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
        class_offsets: Per-class offsets of bias-corrected temperature scaling, already folded into
            the network's diagnosis bias by export (times ``temperature``); the called class
            (``top_class``) is the class-balanced decision ``argmax(log p - offsets)`` (with TTA, of
            the averaged probabilities: close to, not exactly, the average of the variants'
            decisions). None (or zeros): the most probable class.
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
        class_offsets: Sequence[float] | None = None,
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
        self.preprocessor = Preprocessor(self.preprocessing)
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
        self.class_offsets = None
        if class_offsets is not None:
            try:
                offsets = np.asarray(class_offsets, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                offsets = np.array([np.nan])
            if offsets.shape[0] != len(DIAGNOSES) or not np.isfinite(offsets).all():
                raise ConfigError(f"calibration class_offsets must be {len(DIAGNOSES)} finite numbers, "
                                  f"got {class_offsets!r}")
            self.class_offsets = offsets if offsets.any() else None
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
            offsets = (card.get("calibration") or {}).get("class_offsets")
            if offsets and "temperature" in kwargs and "class_offsets" not in kwargs:
                # The offsets are folded into the logits times the bundle's temperature: at another
                # temperature T the class-balanced decision is argmax(log p - offsets * T_bundle / T).
                kwargs["class_offsets"] = [float(b) * bundle.temperature / float(kwargs["temperature"])
                                           for b in offsets]
            kwargs.setdefault("temperature", bundle.temperature)
            kwargs.setdefault("class_offsets", offsets)
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

    # -- inputs --------------------------------------------------------------------------------

    def prepare(self, item: Any, index: int = 0) -> PreparedInput:
        """Decode one input once, as :meth:`predict` does, for :meth:`predict` and :meth:`explain` to share.

        Accepts what :func:`~backend.inference.inputs.prepare_input` does: an RGB uint8 array, a file
        path, ``(name, bytes)``, ``(name, array)``, raw bytes, a file-like upload with ``.name`` or a
        :class:`PreparedInput` (returned as is). Large files are decoded at reduced size (short side
        not below :attr:`decode_side`).

        Raises:
            ImageLoadError: The image cannot be decoded (message names it and the reason).
            ConfigError: An array that is not HxWx3 uint8, or an unsupported input type.
        """
        return prepare_input(item, index, self.decode_side)

    @property
    def decode_side(self) -> int:
        """Short side a large file is decoded at, at least: the network input and the focus measure's side.

        The blur check measures sharpness at ``quality.blur_side`` (224 px) and never upsamples, so a
        file decoded below it would read sharper than it is, depending on its size alone.
        """
        return max(self.img_size, int(self.quality.blur_side))

    def load(self, item: Any, index: int = 0) -> tuple[str, np.ndarray]:
        """``(name, HxWx3 uint8 RGB)`` of one input, decoded exactly as :meth:`predict` does (see :meth:`prepare`)."""
        prepared = self.prepare(item, index)
        return prepared.name, prepared.image

    def _stack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(list(tensors))
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded images -> network input ``(B, 3, S, S)`` float32 (hair removal if trained so, eval transform)."""
        return self._stack([self.preprocessor(image) for image in images])

    def encode_metadata(self, metadata: Sequence[dict[str, Any] | None] | None, n: int
                        ) -> tuple[np.ndarray | None, np.ndarray]:
        """Encoded metadata ``(n, dim)`` (None for image-only models) and a per-row "given" mask.

        A row without metadata is encoded as "age, sex and site unknown", as training encodes such
        rows (:func:`~backend.inference.inputs.encode_metadata`).

        Raises:
            ConfigError: Wrong number of rows, unknown keys or values outside the vocabulary.
        """
        return encode_metadata(self.encoder, metadata, n)

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
                return RawOutputs(*engine(x, meta))  # ONNX Runtime reads plain NCHW: no channels_last copy
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():
            m = None if meta is None else torch.from_numpy(np.asarray(meta, dtype=np.float32))
            probs, logits, thickness, features = self._forward_group(x, m, tta)
            thickness_mm = self.scaler.denormalise(thickness)
        return RawOutputs(probs.numpy().astype(np.float64), logits.numpy(), thickness_mm.numpy(), features.numpy())

    # -- the batched path -----------------------------------------------------------------------

    def iter_outputs(self, images: Sequence[Any], metadata: Sequence[dict[str, Any] | None] | None = None, *,
                     names: Sequence[str] | None = None, tta: bool | None = None, predictions: bool = True,
                     keep_inputs: bool = False, use_metadata: bool = True, num_workers: int = 0,
                     progress: bool = False) -> Iterator[OutputBatch]:
        """Run many inputs batch by batch through a DataLoader: the one batched inference path.

        Decoding, metadata encoding, quality flags and preprocessing run per image in the
        DataLoader (in ``num_workers`` worker processes, or here when 0); the forward pass, TTA,
        calibration, OOD distance and the records run here. Unusable inputs (unreadable images,
        bad metadata rows) are reported in each batch's ``failures`` and skipped.

        Args:
            images: Anything :meth:`prepare` accepts, one per image; a lazy sequence is read by
                index in the workers (e.g. ``backend.evaluation.acquisition.PerturbedImages``).
            metadata: One patient-metadata dict (or None) per image, or None for none.
            names: What to call each image in the records instead of the name it carries.
            tta: Average over the 8 flips/rotations; default the predictor's ``tta``.
            predictions: Also compute the quality flags and :class:`Prediction` records (False:
                network outputs only, for evaluation, calibration and embedding).
            keep_inputs: Return each usable input's :class:`PreparedInput` (to explain or hash
                it afterwards without decoding or preprocessing it again).
            use_metadata: Feed the metadata to a fusion model; False uses its learned "no
                metadata" path for every image (evaluating the image branch alone).
            num_workers: DataLoader worker processes (0: decode in this process).
            progress: Show a progress bar.

        Raises:
            ConfigError: ``metadata`` or ``names`` of another length than ``images``.
        """
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        tta = self.tta if tta is None else bool(tta)
        dataset = InputDataset(images, metadata, names, self.decode_side, self.preprocessor,
                               self.encoder if use_metadata else None, self.quality if predictions else None,
                               keep_inputs)
        loader: Any = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=num_workers,
                                 collate_fn=collate_inputs)
        if progress:
            from tqdm.auto import tqdm

            loader = tqdm(loader, desc="images", unit="batch")
        for batch in loader:
            yield self._outputs(batch, tta, predictions, keep_inputs)

    def _outputs(self, batch: InputBatch, tta: bool, predictions: bool, keep_inputs: bool) -> OutputBatch:
        """Forward pass and records of one collated batch."""
        items = batch.items
        inputs = [item.prepared for item in items] if keep_inputs else None
        used = np.array([item.metadata_used for item in items], dtype=bool)
        indices, names = [item.index for item in items], [item.name for item in items]
        if not items:
            return OutputBatch(batch.size, [], [], RawOutputs.empty(), [], batch.failures, inputs, used)
        raw = self.forward(batch.x, batch.meta, tta)
        records: list[Prediction] = []
        if predictions:
            distances = None
            if self.feature_stats is not None and self.quality.ood_enabled:
                distances = self.feature_stats.distance(raw.features)
            for i, item in enumerate(items):
                flags = list(item.flags or [])
                dist = None if distances is None else float(distances[i])
                if dist is not None:
                    ood = self.feature_stats.flag(dist)
                    if ood is not None:
                        flags.append(ood)
                records.append(Prediction.from_outputs(item.name, raw.probs[i], float(raw.thickness_mm[i]), flags,
                                                       self.risk, bool(used[i]), tta, dist, self.class_offsets))
        return OutputBatch(batch.size, indices, names, raw, records, batch.failures, inputs, used)

    # -- prediction -------------------------------------------------------------------------

    def predict(self, images: Sequence[Any] | Any, metadata: Sequence[dict[str, Any] | None] | None = None,
                tta: bool | None = None) -> list[Prediction]:
        """Predict every image; one :class:`Prediction` per input, in order.

        Args:
            images: A list of anything :meth:`prepare` accepts (arrays, paths, ``(name, bytes)``
                uploads, :class:`PreparedInput`); a single one is accepted too.
            metadata: One dict per image (``age_approx``, ``sex``, ``anatom_site_general``; missing
                keys or None mean unknown), or None.
            tta: Average over the 8 flips/rotations; default the predictor's ``tta``.

        Raises:
            ImageLoadError: An image cannot be decoded.
            ConfigError: Bad metadata or input types.
        """
        if is_single_input(images):
            images = [images]
            metadata = [metadata] if isinstance(metadata, dict) else metadata
        images = list(images)
        results: list[Prediction] = []
        for batch in self.iter_outputs(images, metadata, tta=tta):
            if batch.failures:
                raise batch.failures[0].error()
            results.extend(batch.predictions)
        return results

    def predict_decoded(self, decoded: Sequence[tuple[str, np.ndarray]],
                        metadata: Sequence[dict[str, Any] | None] | None = None, tta: bool = False
                        ) -> list[Prediction]:
        """Predict already decoded ``(name, image)`` pairs (see :meth:`load`)."""
        return self.predict(list(decoded), metadata, tta=tta)

    # -- calibration, OOD statistics and evaluation ------------------------------------------------

    def raw_outputs(self, images: Sequence[Any], metadata: Sequence[dict[str, Any] | None] | None = None,
                    progress: bool = False, tta: bool = False, num_workers: int = 0, use_metadata: bool = True
                    ) -> tuple[RawOutputs, list[int], list[str]]:
        """Network outputs over many images, skipping unusable ones (calibration, OOD fitting, evaluation, embedding).

        Args:
            images: Anything :meth:`prepare` accepts, one per image (a lazy sequence is read by index).
            metadata: One patient-metadata dict (or None) per image; None for no metadata at all.
            progress: Show a progress bar.
            tta: Average over the 8 flips/rotations (off for calibration and OOD fitting, which
                describe the plain forward pass).
            num_workers: DataLoader worker processes decoding the images.
            use_metadata: Feed the metadata to a fusion model (see :meth:`iter_outputs`).

        Returns:
            The outputs of the usable images, their indices in ``images``, and one message per
            skipped image.
        """
        parts: list[RawOutputs] = []
        kept: list[int] = []
        skipped: list[str] = []
        for batch in self.iter_outputs(images, metadata, tta=tta, predictions=False, use_metadata=use_metadata,
                                       num_workers=num_workers, progress=progress):
            skipped.extend(failure.message for failure in batch.failures)
            if batch.indices:
                parts.append(batch.raw)
                kept.extend(batch.indices)
        return RawOutputs.concatenate(parts), kept, skipped

    def fit_ood(self, images: Sequence[Any], percentile: float = 99.0) -> FeatureStats:
        """Fit and install out-of-distribution statistics on in-domain (training) images."""
        raw, _, _ = self.raw_outputs(images)
        self.feature_stats = FeatureStats.fit(raw.features, percentile=percentile)
        return self.feature_stats

    # -- explanation --------------------------------------------------------------------------

    def explain_batch(self, images: Sequence[Any], target: str | int | Sequence[str] | None = None,
                      metadata: Sequence[dict[str, Any] | None] | None = None) -> list[np.ndarray]:
        """Grad-CAM heatmaps, one ``(H, W)`` float32 array in ``[0, 1]`` per image at its decoded size.

        A :class:`PreparedInput` is neither decoded nor preprocessed again (its network input from
        an earlier :meth:`predict` is reused).

        Args:
            images: As for :meth:`predict` (arrays keep their size; paths and uploads are decoded
                like :meth:`prepare`, i.e. at reduced size when large).
            target: A diagnosis name or index, ``"thickness"`` (the regression output),
                ``"malignant"`` (log-odds of P(malignant)), None (each image's predicted class, as
                :meth:`predict` with the predictor's TTA setting calls it), or a list of one diagnosis
                name per image (e.g. the classes a prediction reported); see
                :func:`~backend.inference.explain.cam_targets`.
            metadata: As for :meth:`predict`.
        """
        prepared = [self.prepare(item, i) for i, item in enumerate(images)]
        if not prepared:
            return []
        meta, _ = self.encode_metadata(metadata, len(prepared))
        x = self._stack([self.preprocessor.of(p) for p in prepared])
        if not isinstance(target, (str, int, np.integer)) and target is not None:
            target = [str(t) for t in target]  # a list, tuple, array or Series of class names
            # One diagnosis per image, e.g. the classes predict() reported: explained as they are.
            if len(target) != len(prepared) or any(t not in DIAGNOSES for t in target):
                raise ConfigError(f"Grad-CAM targets must be one diagnosis of {list(DIAGNOSES)} per image "
                                  f"({len(prepared)}), got {list(target)!r}")
            head, targets = cam_targets(None, len(prepared), [DIAGNOSES.index(t) for t in target])
        elif target is None:
            # "The predicted class" is the one predict() reports: the class-balanced decision (which
            # the folded offsets may rank below a common class), of the TTA-averaged probabilities
            # when the model predicts with TTA. Not the top logit of the single plain view.
            probs = self.forward(x, meta, tta=self.tta).probs
            head, targets = cam_targets(None, len(prepared),
                                        balanced_decision_scores(probs, self.class_offsets).argmax(axis=1))
        else:
            head, targets = cam_targets(target, len(prepared))
        with self._lock, LesionCAM(self.net, head=head, meta=None if meta is None else torch.from_numpy(meta)) as cam:
            cams = cam(x, targets)
        return [heatmap_to_image(c, p.image.shape, self.img_size) for c, p in zip(cams, prepared, strict=True)]

    def explain(self, image: Any, target: str | int | None = None, metadata: dict[str, Any] | None = None
                ) -> np.ndarray:
        """Grad-CAM heatmap of one image (see :meth:`explain_batch`)."""
        return self.explain_batch([image], target, None if metadata is None else [metadata])[0]

    @staticmethod
    def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
        """Heatmap blended over the image (``backend.inference.explain.overlay``)."""
        return overlay(image, heatmap, opacity)
