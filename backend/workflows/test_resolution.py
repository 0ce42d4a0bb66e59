"""Choose the side a bundle predicts at: test resolution with BatchNorm adapted, chosen on validation.

Training crops a random part of each image (random-resized crop) and resizes it to the training
side, so lesions look larger in training than in the eval transform's whole-image resize at the same
side; a network then often ranks best at a larger test side than it was trained at (Touvron et al.,
"Fixing the train-test resolution discrepancy", NeurIPS 2019). Its BatchNorm statistics, measured at
the training side, no longer match there, so for each candidate side they are adapted on training
images (:func:`backend.models.batchnorm.adapt_batchnorm`; labels unused, weights unchanged).

:func:`choose_test_resolution` scores each candidate on the validation split by malignant AUROC, the
figure the pipeline selects models by, after the same calibration export fits (which changes how the
malignant classes' probabilities add up), and keeps the best. The network as trained, at its training
side, is always the first candidate, so the choice never lowers that validation figure; the test
split is not read. The record of every candidate goes into the model card.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from backend.data.dataset import encode_targets
from backend.errors import ConfigError
from backend.evaluation.split_eval import row_metadata
from backend.inference.batches import InputDataset, collate_inputs
from backend.inference.predictor import Predictor
from backend.inference.records import RawOutputs
from backend.io.checkpoint import LoadedModel
from backend.metrics.calibration import calibrated_probs, fit_calibration
from backend.metrics.classification import binary_auroc, malignant_probability
from backend.models.batchnorm import adapt_batchnorm

log = logging.getLogger(__name__)

#: What the card calls the selection criterion.
CRITERION = "malignant AUROC on the validation split"


@dataclass
class ResolutionChoice:
    """The chosen side and what export goes on with.

    Attributes:
        img_size: The side the bundle predicts at.
        predictor: A predictor (temperature 1; export fits and stores the temperature) on the chosen
            network and side.
        raw: Its outputs on the usable validation rows (reused to fit the temperature).
        kept: Indices of those rows in the validation table.
        skipped: One message per unreadable validation image (at the chosen side) or adaptation image.
        record: The card's ``test_resolution`` entry: every candidate and its validation score.
    """

    img_size: int
    predictor: Predictor
    raw: RawOutputs
    kept: list[int]
    skipped: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def check_sizes(sizes: list[int]) -> list[int]:
    """Candidate sides as ints, each >= 32 and listed once.

    Raises:
        ConfigError: Naming the bad entry.
    """
    out: list[int] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 32:
            raise ConfigError(f"test_img_sizes: each side must be an integer >= 32 pixels, got {size!r}")
        if size in out:
            raise ConfigError(f"test_img_sizes: {size} is listed twice")
        out.append(size)
    return out


def _predictor(loaded: LoadedModel, net: torch.nn.Module, size: int, batch_size: int) -> Predictor:
    return Predictor(net, {**loaded.preprocessing, "img_size": size}, loaded.thickness_scaler,
                     loaded.metadata_encoder, batch_size=batch_size)


def _adapt(predictor: Predictor, images: list[Any], num_workers: int) -> tuple[int, list[str]]:
    """Adapt the predictor's backbone BatchNorm statistics to its side on ``images``."""
    dataset = InputDataset(images, None, None, predictor.img_size, predictor.preprocessor, None, None)
    loader = DataLoader(dataset, batch_size=predictor.batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_inputs)
    skipped: list[str] = []

    def batches() -> Any:
        for batch in loader:
            skipped.extend(failure.message for failure in batch.failures)
            if batch.x is not None:
                yield batch.x.contiguous(memory_format=torch.channels_last) if predictor.channels_last else batch.x

    try:
        seen = adapt_batchnorm(predictor.net.backbone, batches())
    except ValueError as err:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise ConfigError(f"test side {predictor.img_size} px: cannot adapt BatchNorm: {err}; none of the "
                          f"{len(images)} adaptation images could be used{first}") from None
    return seen, skipped


def choose_test_resolution(
    loaded: LoadedModel, val: pd.DataFrame, train: pd.DataFrame, sizes: list[int], *, adapt_images: int = 1000,
    batch_size: int = 32, num_workers: int = 0, seed: int = 0, calibration_method: str = "temperature",
) -> ResolutionChoice:
    """Score the network as trained and with BatchNorm adapted at each side in ``sizes``; keep the best.

    Args:
        loaded: The trained model (its ``preprocessing['img_size']`` is the training side).
        val: Validation rows (``image``, metadata and label columns).
        train: Training rows; ``adapt_images`` of them (sampled with ``seed``) adapt BatchNorm.
        sizes: Candidate test sides in pixels.
        adapt_images: Training images per adaptation.
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes decoding the images.
        seed: Sampling seed for the adaptation images.
        calibration_method: The calibration export fits (``backend.metrics.calibration.CALIBRATION_METHODS``),
            fitted per candidate before scoring it.

    Raises:
        ConfigError: Bad sizes, no training images, or no validation row with both classes.
    """
    sizes = check_sizes(list(sizes))
    if getattr(loaded.net.backbone, "reshape_transform", None) is not None:
        raise ConfigError(f"test_img_sizes: backbone {loaded.config.get('model', {}).get('backbone')!r} is a "
                          "vision transformer with a fixed token grid; only convolutional backbones can "
                          "predict at another side")
    if train.empty or adapt_images < 1:
        raise ConfigError(f"choosing the test resolution needs training images to adapt BatchNorm "
                          f"(train rows {len(train)}, adapt_images {adapt_images})")
    sample = train.sample(n=min(adapt_images, len(train)), random_state=seed)["image"].tolist()
    train_size = int(loaded.preprocessing["img_size"])
    candidates = [(train_size, False)] + [(size, True) for size in sizes]
    rows, best, unreadable = [], None, set()
    for size, adapt in candidates:
        net = copy.deepcopy(loaded.net) if adapt else loaded.net
        predictor = _predictor(loaded, net, size, batch_size)
        seen = 0
        if adapt:
            seen, failed = _adapt(predictor, sample, num_workers)
            unreadable.update(failed)  # the same sample at every side: each image reported once
        raw, kept, failed = predictor.raw_outputs(val["image"].tolist(), row_metadata(val), num_workers=num_workers)
        targets = encode_targets(val.iloc[kept].reset_index(drop=True))
        labels, diagnosis = targets["label"], targets["diagnosis"]
        temperature, offsets = (fit_calibration(raw.logits, diagnosis, calibration_method)
                                if (diagnosis >= 0).any() else (1.0, None))
        known = labels >= 0
        probs = calibrated_probs(raw.logits, temperature, offsets)
        score = binary_auroc(labels[known], malignant_probability(probs[known]))
        if score != score:  # NaN: the validation rows lack malignant or benign lesions
            raise ConfigError("choosing the test resolution needs malignant and benign validation images")
        row = {"img_size": size, "batchnorm": f"adapted on {seen} training images" if adapt else "as trained",
               "temperature": round(float(temperature), 4), "auroc_malignant": round(float(score), 4)}
        rows.append(row)
        log.info("test resolution %d px (%s): validation malignant AUROC %.4f", size, row["batchnorm"], score)
        if best is None or score > best[0]:
            best = (score, size, predictor, raw, kept, row, failed)
    assert best is not None
    _, size, predictor, raw, kept, row, failed = best
    skipped = [*failed, *sorted(unreadable)]
    record = {"train_img_size": train_size, "img_size": size, "batchnorm": row["batchnorm"],
              "chosen_by": CRITERION, "candidates": rows}
    return ResolutionChoice(size, predictor, raw, kept, skipped, record)
