"""Leave-one-dataset-out check: does the recipe still rank lesions from a clinic it never saw?

Images from other dermoscopes and clinics differ in colour, vignetting and resolution. For each
source ``dataset`` named in the config, one run of the recipe is trained on the other datasets only
(its rows removed from the training *and* validation splits) and scored on every image of the left-out
dataset. The same recipe trained on all datasets is scored on the left-out dataset's test-split
images as the in-domain reference. Several recipes (``variants``) can be compared, e.g. ours against
one without colour constancy and colour/vignette augmentation.

All runs go through :func:`backend.workflows.study_runs.train_once`, so an interrupted check resumes
and a recipe shared with the ablation study is not trained twice.

With ``calibration`` (the default model's export setting) each run is calibrated on its own
validation split before it is scored, as export calibrates the bundle: for the left-out run that
split holds no image of the left-out dataset, so the check also shows whether calibration learnt on
some clinics (with their own mix of diagnoses) helps or hurts on another.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from backend.data.dataset import encode_targets
from backend.data.formats import default_img_dir, load_table
from backend.data.splits import read_splits
from backend.errors import ConfigError
from backend.evaluation.split_eval import predict_rows, score_rows
from backend.inference.predictor import Predictor
from backend.metrics.calibration import CALIBRATION_METHODS
from backend.workflows.export import calibrate_net
from backend.workflows.study_runs import StudyConfig, recipe, train_once

log = logging.getLogger(__name__)

#: Figures per row of the table (names as in :func:`backend.evaluation.model_card.card_metrics`).
METRICS = ("auroc_malignant", "auroc_melanoma", "balanced_accuracy")


@dataclass
class LodoConfig(StudyConfig):
    """The ``lodo`` section of ``cfgs/default.yaml``: recipes to check and the datasets to leave out.

    The base recipe is usually a shorter version of the default model's, so one run fits a few
    CPU-minutes.

    Attributes:
        datasets: Values of the table's ``dataset`` column to leave out, one at a time.
        n_boot: Bootstrap resamples for the 95% intervals.
    """

    datasets: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=lambda: {"ours": []})
    n_boot: int = 1000

    def validate(self) -> None:
        """At least one dataset and one recipe, each recipe valid."""
        if not self.datasets:
            raise ConfigError("lodo.datasets: name at least one dataset to leave out")
        if self.n_boot < 1:
            raise ConfigError(f"lodo.n_boot (bootstrap resamples) must be >= 1, got {self.n_boot}")
        self.check_variants("lodo.")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "dataset"


def in_dataset(values: pd.Series, dataset: str) -> pd.Series:
    """Rows of ``dataset``, also where an image belongs to several (``ISIC2017+ISIC2019``).

    A merged table tags an image found in two sources with both names; leaving ISIC2017 out must
    leave those images out too, or the run would still train and calibrate on part of ISIC2017.
    """
    return values.fillna("").astype(str).str.split("+").map(lambda tags: dataset in [t.strip() for t in tags])


def leave_out(csv: str | Path, img_dir: str | Path | None, splits_csv: str | Path, dataset: str,
              folder: str | Path) -> tuple[Path, Path, Path]:
    """Write the label file and split file of the table without ``dataset``.

    Returns:
        The new label CSV, its split CSV and the image folder its names resolve against.

    Raises:
        ConfigError: The table has no ``dataset`` column or no row of ``dataset``.
    """
    csv, folder = Path(csv), Path(folder)
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "dataset" not in raw.columns:
        raise ConfigError(f"{csv}: no 'dataset' column, so no dataset can be left out")
    keep = ~in_dataset(raw["dataset"], dataset)
    if keep.all():
        known = sorted(set(raw["dataset"]))
        raise ConfigError(f"lodo.datasets: no row of {csv} has dataset {dataset!r} (datasets: {known})")
    folder.mkdir(parents=True, exist_ok=True)
    out_csv = folder / "labels.csv"
    raw[keep].to_csv(out_csv, index=False)
    images = Path(img_dir) if img_dir else default_img_dir(csv)
    ids = set(load_table(out_csv, img_dir=images, check_images=False)["image_id"].astype(str))
    splits = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
    out_splits = folder / "splits.csv"
    splits[splits["image_id"].isin(ids)].to_csv(out_splits, index=False)
    return out_csv, out_splits, images


def calibrated_predictor(ckpt: Path, val: pd.DataFrame, method: str) -> Predictor:
    """The checkpoint's predictor calibrated on ``val`` rows with ``method``, as export calibrates a bundle.

    Offsets (bias-corrected temperature scaling) are folded into the diagnosis head and kept for
    the class-balanced decision, exactly as in :func:`backend.workflows.export.export_bundle`.

    Raises:
        ConfigError: ``val`` has no row with a diagnosis.
    """
    predictor = Predictor.from_checkpoint(ckpt)
    pred = predict_rows(predictor, val)
    labels = encode_targets(pred.rows)["diagnosis"]
    if not (labels >= 0).any():
        raise ConfigError(f"{ckpt}: no validation image with a diagnosis to calibrate on")
    predictor.temperature, offsets = calibrate_net(predictor.net, pred.raw.logits, labels, method)
    if offsets is not None:
        predictor.class_offsets = offsets
    return predictor


def run_lodo(cfg: LodoConfig, splits_csv: str | Path, calibration: str | None = None) -> list[dict[str, Any]]:
    """Train and score every (recipe, left-out dataset) pair plus each recipe's in-domain reference.

    Args:
        cfg: The check's config.
        splits_csv: The default model's grouped split, so the in-domain reference is scored on the
            same test images as the model card.
        calibration: Calibrate each run on its own validation split first (a key of
            ``backend.metrics.calibration.CALIBRATION_METHODS``); None scores the raw network.

    Returns:
        One record per (recipe, dataset, setting) with the figures and their intervals.
    """
    cfg.validate()
    if calibration is not None and calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration: unknown {calibration!r}; valid: {sorted(CALIBRATION_METHODS)}")
    base = recipe(cfg.base_tree())
    table = load_table(base.data.csv, img_dir=base.data.img_dir)
    assignment = read_splits(splits_csv, table).reindex(table.index)
    test, val = assignment == "test", table[assignment == "val"]
    records: list[dict[str, Any]] = []

    predictors: dict[Path, Predictor] = {}

    def score(ckpt: Path, run_val: pd.DataFrame, rows: pd.DataFrame) -> dict[str, Any]:
        if ckpt not in predictors:
            predictors[ckpt] = (Predictor.from_checkpoint(ckpt) if calibration is None
                                else calibrated_predictor(ckpt, run_val, calibration))
        pred = predict_rows(predictors[ckpt], rows)
        figures = score_rows(pred, n_boot=cfg.n_boot, only=METRICS)
        return {"rows": len(pred.rows), "malignant": int(pred.rows["label"].eq(1).sum()),
                "melanomas": int(pred.rows["diagnosis"].eq("MEL").sum()), "calibration": calibration or "none",
                "metrics": figures}

    for name, overrides in cfg.variants.items():
        reference = train_once(recipe(cfg.base_tree(), [*overrides, f"data.split_csv={splits_csv}"]),
                               cfg.output_dir, f"lodo-{name}-all")
        for dataset in cfg.datasets:
            rows = table[in_dataset(table["dataset"], dataset)]
            folder = Path(cfg.output_dir) / f"lodo-data-{_slug(dataset)}"
            csv, split, images = leave_out(base.data.csv, base.data.img_dir, splits_csv, dataset, folder)
            without = [*overrides, f"data.csv={csv}", f"data.img_dir={images}", f"data.split_csv={split}"]
            held_out = train_once(recipe(cfg.base_tree(), without), cfg.output_dir,
                                  f"lodo-{name}-without-{_slug(dataset)}")
            # The left-out run's validation split is the default split's without the dataset (leave_out).
            val_without = val[~in_dataset(val["dataset"], dataset)]
            for setting, ckpt, run_val, subset in (
                ("in-domain (test split)", reference.best_ckpt, val, rows[test[rows.index]]),
                ("left out (all images)", held_out.best_ckpt, val_without, rows),
                ("left out (test split)", held_out.best_ckpt, val_without, rows[test[rows.index]]),
            ):
                record = {"recipe": name, "description": cfg.describe(name),
                          "dataset": dataset, "setting": setting, **score(ckpt, run_val, subset)}
                log.info("lodo %s / %s / %s: %s", name, dataset, setting, record["metrics"])
                records.append(record)
    return records


def _cell(entry: dict[str, float]) -> str:
    value = entry.get("value")
    if value is None or math.isnan(value):
        return "n/a"
    if entry.get("lo") is None or math.isnan(entry["lo"]):
        return f"{value:.3f}"
    return f"{value:.3f} ({entry['lo']:.3f}-{entry['hi']:.3f})"


def lodo_markdown(records: list[dict[str, Any]]) -> str:
    """The check as a markdown table (95% bootstrap intervals: patients resampled, else lesions, else images)."""
    lines = ["| recipe | dataset | model / images | n (malignant, MEL) | malignant AUROC | melanoma AUROC "
             "| balanced acc. |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        m = r["metrics"]
        lines.append(f"| {r['recipe']} | {r['dataset']} | {r['setting']} | {r['rows']} ({r['malignant']}, "
                     f"{r['melanomas']}) | {_cell(m['auroc_malignant'])} | {_cell(m['auroc_melanoma'])} | "
                     f"{_cell(m['balanced_accuracy'])} |")
    return "\n".join(lines) + "\n"
