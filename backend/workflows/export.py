"""Export workflow: a training checkpoint becomes a bundle with calibration, OOD statistics and operating points.

This sits on top of inference and evaluation (it predicts the run's validation and training splits
with a :class:`~backend.inference.predictor.Predictor`), while :mod:`backend.io.bundle` stays the
plain file format it writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.splits import read_splits
from backend.errors import ConfigError
from backend.evaluation.evaluate import default_splits_csv
from backend.evaluation.operating_points import choose_operating_points
from backend.evaluation.split_eval import row_metadata
from backend.files import safe_torch_load, sha256_file
from backend.inference.predictor import Predictor
from backend.inference.quality import FeatureStats
from backend.inference.risk import risk_index
from backend.io.bundle import ONNX_FILE, read_card, save_bundle, write_card
from backend.io.checkpoint import load_lesion_checkpoint
from backend.io.onnx import DEFAULT_OPSET, OUTPUT_NAMES, export_onnx
from backend.metrics.calibration import (
    CALIBRATION_METHODS,
    apply_temperature,
    expected_calibration_error,
    fit_calibration,
)
from backend.metrics.scores import compute_metrics
from backend.workflows.test_resolution import choose_test_resolution


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        bundle_dir: The bundle folder.
        card: The model card written.
        onnx_path: The ONNX file, or None.
        skipped: Messages for images that could not be read while fitting.
    """

    bundle_dir: Path
    card: dict[str, Any]
    onnx_path: Path | None = None
    skipped: list[str] = field(default_factory=list)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _checkpoint_scores(path: Path) -> dict[str, float]:
    """The monitored best score Lightning stored in a checkpoint (what we know without data)."""
    scores: dict[str, float] = {}
    for key, state in (safe_torch_load(path).get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(state, dict) and state.get("best_model_score") is not None:
            monitor = str(state.get("monitor") or "best_model_score")
            try:
                scores[monitor] = float(state["best_model_score"])
            except (TypeError, ValueError):
                continue
    return scores


def calibrate_net(net: Any, logits: Any, labels: Any, method: str) -> tuple[float, Any]:
    """Fit ``method`` on validation ``logits``/``labels`` and fold any offsets into ``net``, in place.

    The offsets times the temperature are added to the diagnosis head's bias, so the network's
    softmax at that temperature is the calibrated probability (PyTorch and ONNX alike).

    Returns:
        ``(temperature, offsets or None)``.
    """
    import torch

    temperature, offsets = fit_calibration(logits, labels, method)
    if offsets is not None:
        bias = net.heads.diagnosis.bias
        with torch.no_grad():
            bias.add_(torch.as_tensor(temperature * offsets, dtype=bias.dtype, device=bias.device))
    return temperature, offsets


def _run_table(csv: str | Path, img_dir: str | Path | None, skip_missing: bool | None,
               run_data: dict[str, Any]) -> Any:
    """The labelled table, loaded with the run's own reading settings when ``csv`` is the run's table."""
    own = bool(run_data.get("csv")) and Path(csv).resolve() == Path(run_data["csv"]).resolve()
    settings = {"format": run_data.get("format") or "auto", "metadata_csv": run_data.get("metadata_csv"),
                "skip_missing": bool(run_data.get("skip_missing"))} if own else {}
    if own and img_dir is None:
        img_dir = run_data.get("img_dir")
    if skip_missing is not None:
        settings["skip_missing"] = skip_missing
    return load_table(csv, img_dir=img_dir, **settings)


def export_bundle(
    checkpoint: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    version: str = "1",
    csv: str | Path | None = None,
    img_dir: str | Path | None = None,
    splits_csv: str | Path | None = None,
    temperature: float | None = None,
    ood_percentile: float = 99.0,
    max_ood_images: int = 5000,
    onnx: bool = False,
    batch_size: int = 32,
    progress: bool = False,
    operating_points: bool = True,
    test_img_sizes: list[int] | None = None,
    adapt_images: int = 1000,
    calibration_method: str = "temperature",
    skip_missing: bool | None = None,
) -> ExportResult:
    """Turn a training checkpoint into a bundle, fitting calibration and OOD statistics on its run's splits.

    With ``csv`` (the labelled table the run was trained on) the temperature is fitted on the
    run's validation split (``fit_temperature``; ECE before and after go into the card with the
    validation metrics), and the out-of-distribution statistics on features of (up to
    ``max_ood_images`` of) its training split, and, with ``operating_points``, the traffic-light
    thresholds on its validation split (``backend.evaluation.operating_points``: "not green" catches
    >= 95% of malignant lesions, "red" holds >= 90% specificity), stored in the card's ``risk``.
    Without it the temperature is ``temperature`` (or 1) and there are no OOD statistics; the card
    then reports the checkpoint's monitored score.

    With ``test_img_sizes`` (and ``csv``) the bundle predicts at the side that ranks the validation
    split's malignant lesions best: the network as trained at its training side, or at one of these
    sides with its BatchNorm statistics adapted there on ``adapt_images`` training images
    (:mod:`backend.workflows.test_resolution`); everything after (temperature, operating points,
    OOD statistics, ONNX) is fitted on the chosen network and side, and the card's
    ``test_resolution`` records every candidate.

    ``csv`` is read as the run read it: when it is the run's own table, with the run's ``data.format``,
    ``data.metadata_csv``, ``data.skip_missing`` and (unless ``img_dir`` is given) ``data.img_dir``;
    ``skip_missing`` overrides the last.

    ``calibration_method`` ``bias_corrected`` fits per-class offsets beside the temperature
    (:func:`~backend.metrics.calibration.fit_bias_corrected_temperature`) and folds them into the
    network's diagnosis bias, so the bundle's probabilities (PyTorch and ONNX alike) are
    ``softmax((logits + T * offsets) / T)``; the card keeps the offsets (``calibration.class_offsets``)
    so the called class stays the network's class-balanced decision.

    Raises:
        CheckpointError: Unsafe or unreadable checkpoint, or export failure.
        DataFormatError: Bad table or splits file.
        ConfigError: No validation/train rows, or a splits file cannot be found.
    """
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {calibration_method!r}; valid: {sorted(CALIBRATION_METHODS)}")
    if temperature is not None and calibration_method != "temperature":
        raise ConfigError(f"a fixed temperature ({temperature}) cannot be combined with calibration "
                          f"{calibration_method!r}, which fits its own; drop one of the two")
    if test_img_sizes and csv is None:
        raise ConfigError(f"test_img_sizes {list(test_img_sizes)} need the labelled table (csv) to choose on "
                          "its validation split")
    checkpoint = Path(checkpoint)
    loaded = load_lesion_checkpoint(checkpoint)
    predictor = Predictor(loaded.net, loaded.preprocessing, loaded.thickness_scaler, loaded.metadata_encoder,
                          batch_size=batch_size)
    calibration: dict[str, Any] = {"fitted_on": None}
    metrics: dict[str, Any] = {}
    extra_card: dict[str, Any] = {}
    ood_summary, extra, skipped = None, None, []
    temp = 1.0 if temperature is None else float(temperature)
    if csv is not None:

        table = _run_table(csv, img_dir, skip_missing, (loaded.config or {}).get("data") or {})
        splits_path = splits_csv or default_splits_csv(checkpoint)
        if splits_path is None:
            raise ConfigError(f"no splits CSV for {checkpoint}: pass splits_csv (the run's splits.csv)")
        assignment = read_splits(splits_path, table).reindex(table.index)
        val = table[assignment == "val"].reset_index(drop=True)
        train = table[assignment == "train"].reset_index(drop=True)
        if val.empty or train.empty:
            raise ConfigError(f"{splits_path}: needs both 'val' and 'train' rows to fit calibration and OOD "
                              f"statistics (val {len(val)}, train {len(train)})")
        if test_img_sizes:
            choice = choose_test_resolution(loaded, val, train, list(test_img_sizes), adapt_images=adapt_images,
                                            batch_size=batch_size, calibration_method=calibration_method)
            predictor, raw, kept, skipped_val = choice.predictor, choice.raw, choice.kept, choice.skipped
            loaded = replace(loaded, net=predictor.net, preprocessing=dict(predictor.preprocessing))
            extra_card["test_resolution"] = choice.record
        else:
            raw, kept, skipped_val = predictor.raw_outputs(val["image"].tolist(), row_metadata(val), progress)
        skipped += skipped_val
        targets = encode_targets(val.iloc[kept].reset_index(drop=True))
        labels = targets["diagnosis"]
        before = apply_temperature(raw.logits, 1.0)
        offsets = None
        if temperature is None and (labels >= 0).any():
            temp, offsets = calibrate_net(loaded.net, raw.logits, labels, calibration_method)
            if offsets is not None:
                raw = raw._replace(logits=raw.logits + temp * offsets)
        after = apply_temperature(raw.logits, temp)
        known = labels >= 0
        calibration = {
            "fitted_on": f"val split of {splits_path} ({int(known.sum())} images with a diagnosis)",
            "ece_before": expected_calibration_error(before[known], labels[known]) if known.any() else None,
            "ece_after": expected_calibration_error(after[known], labels[known]) if known.any() else None,
        }
        if offsets is not None:
            calibration = {"method": CALIBRATION_METHODS[calibration_method],
                           "class_offsets": [round(float(v), 6) for v in offsets], **calibration}
        metrics = _scalar_metrics(compute_metrics(
            labels, after, y_true_malignant=targets["label"], thickness_pred_mm=raw.thickness_mm,
            thickness_lo=targets["thickness_lo"], thickness_hi=targets["thickness_hi"], class_offsets=offsets,
        ))
        metrics["n_images"] = len(kept)
        if operating_points:

            try:
                predictor.risk, op_record = choose_operating_points(
                    risk_index(after, predictor.risk), targets["label"], base=predictor.risk,
                    source=f"val split of {splits_path} ({len(kept)} images)",
                )
            except ConfigError as err:  # a validation split without both classes: keep the policy file's
                op_record = {"skipped": f"thresholds kept from the risk policy file: {err}"}
            extra_card["operating_points"] = {"validation": op_record}
        if len(train) > max_ood_images:
            train = train.sample(n=max_ood_images, random_state=0).reset_index(drop=True)
        feats, _, skipped_train = predictor.raw_outputs(train["image"].tolist(), row_metadata(train), progress)
        skipped += skipped_train
        try:
            stats = FeatureStats.fit(feats.features, percentile=ood_percentile)
        except ValueError as err:
            raise ConfigError(f"cannot fit out-of-distribution statistics on the train split: {err}") from None
        ood_summary = {**stats.summary(), "fitted_on": f"train split of {splits_path} ({stats.n} images)"}
        extra = stats.tensors()
    else:
        metrics = _checkpoint_scores(checkpoint)
    out = save_bundle(
        output, loaded, name=name or checkpoint.stem, version=version, temperature=temp, calibration=calibration,
        ood=ood_summary, extra_tensors=extra, validation_metrics=metrics,
        extra_card={"risk": predictor.risk.to_dict(), **extra_card},
    )
    card = read_card(out)
    onnx_path = None
    if not onnx:
        # A model.onnx left by an earlier export into this folder belongs to other weights or another
        # calibration: it must not travel with the new bundle (copies of the folder, benchmarks).
        (out / ONNX_FILE).unlink(missing_ok=True)
    if onnx:

        onnx_path = export_onnx(loaded.net, out / ONNX_FILE, int(loaded.preprocessing["img_size"]), temperature=temp,
                                thickness_scaler=loaded.thickness_scaler)
        card["onnx"] = {
            "file": ONNX_FILE, "sha256": sha256_file(onnx_path), "opset": DEFAULT_OPSET,
            "inputs": ["image (B, 3, S, S) float32, eval-transformed"]
            + (["metadata (B, meta_dim) float32", "metadata_present (B,) float32"] if loaded.net.use_metadata else []),
            "outputs": list(OUTPUT_NAMES),
        }
        write_card(out, card)
    return ExportResult(out, card, onnx_path, skipped)
