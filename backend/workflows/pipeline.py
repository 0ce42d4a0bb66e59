"""The default-model recipe as resumable stages: BYOL -> supervised -> bundle -> model card.

``make default-model`` (``python -m scripts.default_model``) runs :func:`run_pipeline` on
``cfgs/default.yaml``. Each stage records what it produced in ``<work_dir>/<stage>.json`` when it
finishes; a rerun skips finished stages and resumes an unfinished training stage from its
``last.ckpt``, so the recipe can be stopped at any moment and continued later, stage by stage
(``--stages train export``) or whole.

Stages:

* ``splits``: the lesion- and patient-grouped train/val/test split, fixed once for every later stage
  (``<work_dir>/splits.csv``), and the list of validation and test images that BYOL must not see
  (``<work_dir>/pretrain_exclude.txt``), so no later figure is computed on an image any stage trained on.
* ``byol``: self-supervised pretraining of the backbone (:func:`backend.training.byol_run.pretrain`).
* ``train``: supervised multi-task training started from the BYOL export when there is one.
* ``export``: the bundle (weights + card), temperature fitted on the validation split, OOD
  statistics on the training split (:func:`backend.workflows.export.export_bundle`).
* ``card``: test-split metrics with 95% bootstrap intervals and subgroup metrics, written into the
  bundle's card (``test_metrics``) and as markdown next to it.
* ``lodo``: the leave-one-dataset-out check of the recipe (:mod:`backend.workflows.lodo`), added to
  the card (``leave_one_dataset_out``) and its markdown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.config import from_dict, read_yaml
from backend.data.dataset import encode_targets
from backend.data.formats import load_table
from backend.data.splits import assign_splits, read_splits, write_splits
from backend.errors import ConfigError
from backend.evaluation.acquisition import DESCRIPTIONS, VARIANTS
from backend.evaluation.card_sections import (
    HEADLINE_NAMES,
    operating_points_markdown,
    start_weights_markdown,
    test_resolution_line,
    variants_markdown,
)
from backend.evaluation.model_card import metrics_markdown, subgroup_metrics
from backend.evaluation.operating_points import light_summary
from backend.evaluation.split_eval import predict_rows, score_change, score_rows
from backend.files import atomic_write_text, sha256_file
from backend.inference.predictor import Predictor
from backend.inference.risk import risk_index
from backend.io.bundle import read_card, write_card
from backend.metrics.calibration import CALIBRATION_METHODS
from backend.training.byol_config import ByolConfig
from backend.training.byol_run import pretrain
from backend.training.config import ExperimentConfig
from backend.training.run import fit
from backend.training.run_dirs import latest_resumable_version, list_versions
from backend.workflows.export import export_bundle
from backend.workflows.lodo import LodoConfig, lodo_markdown, run_lodo
from backend.workflows.test_resolution import check_sizes

log = logging.getLogger(__name__)

STAGES = ("splits", "byol", "train", "export", "card", "lodo")


@dataclass
class PipelineConfig:
    """``cfgs/default.yaml``: the stages and their own configs.

    Attributes:
        name: Model name written into the card.
        version: Model version written into the card.
        bundle_dir: Where the bundle goes (``assets/models/default`` is what the app loads).
        work_dir: Stage records (``<stage>.json``).
        stages: Stages to run, in order (a subset of ``splits, byol, train, export, card, lodo``).
        byol: A :class:`backend.training.byol_config.ByolConfig` mapping; None skips pretraining.
        supervised: A :class:`backend.training.config.ExperimentConfig` mapping.
        n_boot: Bootstrap resamples for the model card's intervals.
        card_markdown: Extra copy of the card's markdown (e.g. under ``docs/``); None for none.
        onnx: Also export ``model.onnx`` into the bundle.
        status: One paragraph on where this model stands (shown at the top of the card).
        tta: Predict with the 8 flips/rotations averaged: stored in the bundle (``inference.tta``) so
            the app predicts exactly as the card's figures were measured.
        lodo: Leave-one-dataset-out check (:class:`backend.workflows.lodo.LodoConfig` mapping); None skips it.
        variants: Acquisition variants of the test split the card also scores
            (``backend.evaluation.acquisition``: ``squashed``, ``bordered``).
        baseline: ``{name, bundle_dir}`` of an earlier bundle scored on the same test split and
            variants, shown beside this model's figures; None for none (skipped when the folder is absent).
        start_weights: ``{name, licence, obtain}``: the pretrained start, written into the card.
        test_img_sizes: Sides the export stage also tries predicting at, BatchNorm adapted on
            training images, keeping the best by validation malignant AUROC
            (:mod:`backend.workflows.test_resolution`); empty keeps the training side.
        adapt_images: Training images that adapt BatchNorm to each of those sides.
        calibration: ``temperature`` or ``bias_corrected`` (temperature and per-class offsets;
            ``backend.metrics.calibration``), fitted on the validation split by the export stage.
    """

    name: str = "dermalens-default"
    version: str = "0.1"
    bundle_dir: str = "assets/models/default"
    work_dir: str = "runs/default_model"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    byol: dict[str, Any] | None = None
    supervised: dict[str, Any] = field(default_factory=dict)
    n_boot: int = 1000
    card_markdown: str | None = "docs/model_card.md"
    onnx: bool = False
    status: str | None = None
    tta: bool = False
    lodo: dict[str, Any] | None = None
    variants: list[str] = field(default_factory=lambda: ["squashed", "bordered"])
    baseline: dict[str, str] | None = None
    start_weights: dict[str, str] | None = None
    test_img_sizes: list[int] = field(default_factory=list)
    adapt_images: int = 1000
    calibration: str = "temperature"

    def validate(self) -> None:
        """Reject unknown stages, variants and baseline keys."""
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown {unknown}; valid stages: {list(STAGES)}")
        bad = [v for v in self.variants if v not in VARIANTS or v == "plain"]
        if bad:
            raise ConfigError(f"variants: unknown {bad}; valid: {[v for v in VARIANTS if v != 'plain']}")
        if self.start_weights is not None and set(self.start_weights) != {"name", "licence", "obtain"}:
            raise ConfigError(f"start_weights must have exactly the keys name, licence and obtain, "
                              f"got {sorted(self.start_weights)}")
        check_sizes(self.test_img_sizes)
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration: unknown {self.calibration!r}; valid: {sorted(CALIBRATION_METHODS)}")
        if self.adapt_images < 1:
            raise ConfigError(f"adapt_images must be >= 1, got {self.adapt_images}")
        if self.baseline is not None and set(self.baseline) != {"name", "bundle_dir"}:
            raise ConfigError(f"baseline must have exactly the keys name and bundle_dir, got {sorted(self.baseline)}")
        if self.n_boot < 1:
            raise ConfigError(f"n_boot (bootstrap resamples of the card's intervals) must be >= 1, got {self.n_boot}")


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read ``cfgs/default.yaml`` and check that its stage configs are valid too."""
    cfg = from_dict(PipelineConfig, read_yaml(path))
    from_dict(ExperimentConfig, cfg.supervised)
    if cfg.lodo is not None:

        from_dict(LodoConfig, cfg.lodo).validate()
    if cfg.byol is not None:

        from_dict(ByolConfig, cfg.byol)
    return cfg


def _record(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.work_dir) / f"{stage}.json"


def _done(cfg: PipelineConfig, stage: str) -> dict[str, Any] | None:
    path = _record(cfg, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


#: Per stage: the config fields it depends on (``a.b`` for a key inside one), and the stages whose
#: results it uses (or overwrites in the bundle: export writes a new card, so card and lodo must write
#: theirs into it again).
_STAGE_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "splits": (("supervised.data",), ()),
    "byol": (("byol",), ("splits",)),
    "train": (("supervised",), ("splits", "byol")),
    "export": (("bundle_dir", "name", "version", "onnx", "tta", "test_img_sizes", "adapt_images", "calibration",
                "start_weights"), ("train",)),
    "card": (("n_boot", "variants", "baseline", "status", "card_markdown"), ("export", "train")),
    "lodo": (("lodo", "calibration"), ("splits", "export")),
}


def _config_value(cfg: PipelineConfig, field_path: str) -> Any:
    """``cfg.a`` or, for ``a.b``, the key ``b`` of the mapping ``cfg.a`` (None where absent)."""
    head, *rest = field_path.split(".")
    value: Any = getattr(cfg, head)
    for key in rest:
        value = value.get(key) if isinstance(value, dict) else None
    return value


#: Config fields naming what a stage writes (the bundle, the card's markdown), not what it reads.
_WRITTEN_FIELDS = frozenset({"bundle_dir", "card_markdown"})
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def _fingerprint(path: Path) -> str:
    """SHA-256 of a file, remembered while its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = sha256_file(path)
    return _FINGERPRINTS[key]


def _input_files(tree: Any) -> dict[str, str | None]:
    """Contents (SHA-256) of the files a config tree names.

    Every string that is a file (label tables, start weights, recipes) and each bundle folder's card.
    """
    found: dict[str, str | None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value and len(value) < 1000 and "\n" not in value:
            path = Path(value)
            try:
                if path.is_file():
                    found[value] = _fingerprint(path)
                elif path.is_dir() and (path / "model_card.json").is_file():
                    found[value] = _fingerprint(path / "model_card.json")
            except (OSError, ValueError):  # prose (a status line), not a path
                pass

    walk(tree)
    return found


def stage_inputs(cfg: PipelineConfig, stage: str, records: dict[str, Any]) -> str:
    """A hash of what ``stage`` depends on: its config fields, the files they name, and earlier results.

    A stage record is reused only while this hash is the one it was made with: change the supervised
    recipe, a label in the table or the start weights, and the train stage runs again, and so does
    every stage after it whose inputs changed, instead of exporting a checkpoint of the old recipe.
    Earlier records count by their results (not by their own input hash), so a stage that ran again
    and came to the same result (the same split) does not send the later stages round again.
    Image folders are not read (their size makes it impractical): a changed image needs ``--force``.
    """
    fields, upstream = _STAGE_INPUTS[stage]
    config = {f: _config_value(cfg, f) for f in fields}
    read = {f: v for f, v in config.items() if f not in _WRITTEN_FIELDS}  # what the stage writes is no input
    tree = {"config": config, "files": _input_files(read),
            "upstream": {u: {k: v for k, v in (records.get(u) or {}).items() if k not in ("wall_seconds", "inputs")}
                         for u in upstream}}
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finish(cfg: PipelineConfig, stage: str, result: dict[str, Any]) -> dict[str, Any]:

    path = _record(cfg, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    log.info("stage %s finished: %s", stage, result)
    return result


def stage_splits(cfg: PipelineConfig) -> dict[str, Any]:
    """Assign the grouped split once; list the held-out images that pretraining must leave out."""
    data = from_dict(ExperimentConfig, cfg.supervised).data
    table = load_table(data.csv, img_dir=data.img_dir, format=data.format, metadata_csv=data.metadata_csv,
                       skip_missing=data.skip_missing)
    if data.split_csv:

        splits = read_splits(data.split_csv, table)
    else:
        splits = assign_splits(table, val_frac=data.split.val_frac, test_frac=data.split.test_frac,
                               seed=data.split.seed)
    work = Path(cfg.work_dir)
    splits_csv = write_splits(table, splits, work / "splits.csv")
    held_out = table.loc[splits.reindex(table.index) != "train", "image"].map(lambda p: Path(p).name)
    exclude = work / "pretrain_exclude.txt"
    atomic_write_text(exclude, "".join(f"{name}\n" for name in sorted(held_out)))
    counts = {name: int((splits == name).sum()) for name in ("train", "val", "test")}
    # The contents, not only the paths: a corrected label can move images between splits at equal
    # counts, and the stages after this one (BYOL's held-out images) must see that.
    return {"splits_csv": str(splits_csv), "pretrain_exclude": str(exclude), "counts": counts,
            "splits_sha256": sha256_file(splits_csv), "pretrain_exclude_sha256": sha256_file(exclude)}


def stage_byol(cfg: PipelineConfig, splits: dict[str, Any] | None, inputs: str = "") -> dict[str, Any]:
    """Pretrain (or resume an interrupted pretraining) on training-split images only; export the backbone."""
    byol = from_dict(ByolConfig, cfg.byol)
    byol.resume_version = _interrupted_version(cfg, "byol", Path(byol.log_dir) / byol.experiment_name, inputs)
    if splits and not byol.data.exclude_list:
        byol.data.exclude_list = splits["pretrain_exclude"]
    result = pretrain(byol)
    return {"run_dir": str(result.run_dir), "export": str(result.export), "global_step": result.global_step}


def stage_train(cfg: PipelineConfig, pretrained: str | None, splits: dict[str, Any] | None,
                inputs: str = "") -> dict[str, Any]:
    """Supervised training from the BYOL export (when there is one), resuming an interrupted run."""
    exp = from_dict(ExperimentConfig, cfg.supervised)
    if splits:
        exp.data.split_csv = splits["splits_csv"]
    if pretrained:
        exp.model.pretrained_path = pretrained
    exp.resume_version = _interrupted_version(cfg, "train", Path(exp.log_dir) / exp.experiment_name, inputs)
    result = fit(exp, test=False)
    if result.best_ckpt is None:
        raise ConfigError(f"training in {result.run_dir} produced no best.ckpt")
    return {"run_dir": str(result.run_dir), "best_ckpt": str(result.best_ckpt),
            "metrics": {k: v for k, v in result.metrics.items() if k.startswith("val/")}}


def stage_export(cfg: PipelineConfig, train: dict[str, Any]) -> dict[str, Any]:
    """Bundle the best checkpoint with calibration and OOD statistics fitted on its run's splits."""
    exp = from_dict(ExperimentConfig, cfg.supervised)
    run_dir = Path(train["run_dir"])
    result = export_bundle(
        train["best_ckpt"], cfg.bundle_dir, name=cfg.name, version=cfg.version, csv=exp.data.csv,
        img_dir=exp.data.img_dir, splits_csv=run_dir / "splits.csv", progress=True, onnx=cfg.onnx,
        test_img_sizes=cfg.test_img_sizes, adapt_images=cfg.adapt_images, calibration_method=cfg.calibration,
    )
    card = read_card(result.bundle_dir)
    card["inference"] = {"tta": cfg.tta}
    if cfg.start_weights:
        card["start_weights"] = dict(cfg.start_weights)
    write_card(result.bundle_dir, card)
    return {"bundle_dir": str(result.bundle_dir), "checkpoint": str(train["best_ckpt"]),
            "skipped_images": len(result.skipped), "calibration": result.card.get("calibration"),
            "test_resolution": result.card.get("test_resolution")}


#: Card figures compared across variants and against the baseline.
CARD_HEADLINE = tuple(HEADLINE_NAMES)


def stage_card(cfg: PipelineConfig, train: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the bundle on the test split and write the metrics into its card and markdown.

    Besides the plain test split: what each traffic light means there (operating points), the
    headline figures on the acquisition variants, and the baseline bundle's figures on the same images.
    """
    import numpy as np


    exp = from_dict(ExperimentConfig, cfg.supervised)
    table = load_table(exp.data.csv, img_dir=exp.data.img_dir)
    splits = read_splits(Path(train["run_dir"]) / "splits.csv", table).reindex(table.index)
    test_rows = table[splits == "test"]
    predictor = Predictor.from_checkpoint(cfg.bundle_dir)
    pred = predict_rows(predictor, test_rows, tta=predictor.tta, progress=True)
    rows, skipped = pred.rows, pred.skipped
    metrics = score_rows(pred, n_boot=cfg.n_boot)
    t = encode_targets(rows)
    subgroups = subgroup_metrics(rows, t["diagnosis"], pred.raw.probs, t["label"], class_offsets=pred.class_offsets)
    card = read_card(cfg.bundle_dir)
    card["test_metrics"] = metrics
    card["test_subgroups"] = subgroups.replace({np.nan: None}).to_dict(orient="records")
    ops = dict(card.get("operating_points") or {})
    ops["test"] = light_summary(risk_index(pred.raw.probs, predictor.risk), t["label"], predictor.risk)
    card["operating_points"] = ops
    variants = {"plain": {k: metrics[k] for k in CARD_HEADLINE if k in metrics}}
    changes = {}
    for variant in cfg.variants:
        perturbed = predict_rows(predictor, test_rows, tta=predictor.tta, progress=True, variant=variant)
        variants[variant] = score_rows(perturbed, n_boot=cfg.n_boot, only=CARD_HEADLINE)
        changes[variant] = score_change(pred, perturbed, n_boot=cfg.n_boot, only=CARD_HEADLINE)
    card["test_variants"] = {"descriptions": {v: DESCRIPTIONS[v] for v in variants}, "metrics": variants,
                             "changes": changes}
    if cfg.baseline and (Path(cfg.baseline["bundle_dir"]) / "model_card.json").is_file():
        card["baseline"] = score_baseline(cfg, test_rows)
    elif cfg.baseline:
        log.warning("baseline %s: no bundle in %s, so the card has no baseline columns (make default-model "
                    "copies v0.2 there from git history)", cfg.baseline["name"], cfg.baseline["bundle_dir"])
    if cfg.status:
        card["status"] = cfg.status
    card["test_split"] = {"rows": len(rows), "unreadable": len(skipped), "source": str(exp.data.csv),
                          "tta": predictor.tta, "image_ids_sha256": split_fingerprint(rows["image_id"]),
                          "grouping": "lesion_id and patient_id never cross splits",
                          "fractions": {"val": exp.data.split.val_frac, "test": exp.data.split.test_frac},
                          "seed": exp.data.split.seed}
    write_card(cfg.bundle_dir, card)
    write_card_markdown(cfg, card)
    return {"test_rows": len(rows), "balanced_accuracy": metrics["balanced_accuracy"]["value"],
            "auroc_malignant": metrics["auroc_malignant"]["value"]}


def score_baseline(cfg: PipelineConfig, test_rows: Any) -> dict[str, Any]:
    """The baseline bundle's headline figures on the same test images, plain and per variant."""
    predictor = Predictor.from_checkpoint(cfg.baseline["bundle_dir"])
    figures = {}
    for variant in ["plain", *cfg.variants]:
        pred = predict_rows(predictor, test_rows, tta=predictor.tta, progress=True, variant=variant)
        figures[variant] = score_rows(pred, n_boot=cfg.n_boot, only=CARD_HEADLINE)
    card = predictor.card
    return {"name": cfg.baseline["name"], "model": f"{card.get('name')} {card.get('version')}",
            "metrics": figures}


def split_fingerprint(image_ids: Any) -> str:
    """SHA-256 of the sorted image ids of a split: lets anyone check they evaluate the same images."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode()).hexdigest()


def stage_lodo(cfg: PipelineConfig, splits: dict[str, Any] | None) -> dict[str, Any]:
    """Leave-one-dataset-out check of the recipe, recorded in the bundle's card and markdown."""
    if not splits:
        raise ConfigError(f"stage lodo needs a finished splits stage ({_record(cfg, 'splits')})")
    records = run_lodo(from_dict(LodoConfig, cfg.lodo), splits["splits_csv"], calibration=cfg.calibration)
    card = read_card(cfg.bundle_dir)
    card["leave_one_dataset_out"] = {"recipe": cfg.lodo, "calibration": cfg.calibration, "results": records}
    if cfg.status:
        card["status"] = cfg.status
    write_card(cfg.bundle_dir, card)
    write_card_markdown(cfg, card)
    return {"results": len(records)}


def write_card_markdown(cfg: PipelineConfig, card: dict[str, Any]) -> str:
    """Render the card as markdown into the bundle (``MODEL_CARD.md``) and ``cfg.card_markdown``."""
    import pandas as pd


    subgroups = pd.DataFrame(card.get("test_subgroups") or []).fillna(float("nan"))
    text = render_card_markdown(card, metrics_markdown(card.get("test_metrics") or {}, subgroups))
    for path in (Path(cfg.bundle_dir) / "MODEL_CARD.md", *([Path(cfg.card_markdown)] if cfg.card_markdown else [])):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return text


def render_card_markdown(card: dict[str, Any], metrics_md: str) -> str:
    """The human-readable model card."""
    lodo = card.get("leave_one_dataset_out")
    lodo_md = [] if not lodo else [
        "## Leave-one-dataset-out check (other clinics' dermoscopes)", "",
        "Each left-out dataset was removed from training and validation and scored on all its images; the "
        "in-domain row is the same recipe trained on every dataset, on that dataset's test-split images. "
        f"Recipe: a shorter run of the default recipe ({_recipe_line(lodo.get('recipe') or {})}). "
        + _lodo_calibration_line(lodo.get("calibration")), "",
        lodo_markdown(lodo.get("results") or []),
    ]
    cfg = card.get("config", {})
    model, data, trainer = cfg.get("model", {}), cfg.get("data", {}), cfg.get("trainer") or {}
    calib = card.get("calibration", {})
    lines = [
        f"# Model card: {card.get('name')} {card.get('version')}",
        "",
        f"Created {card.get('created')}. **Decision support, not a diagnosis.**",
        "",
        *([f"**Status.** {card['status']}", ""] if card.get("status") else []),
        "## Intended use",
        "",
        str(card.get("intended_use", "")),
        "",
        "## Model and recipe",
        "",
        f"- Backbone `{model.get('backbone')}` at {data.get('img_size')} px, metadata fusion: "
        f"{data.get('use_metadata')}; classes {', '.join(card.get('classes', []))}.",
        f"- Pretrained start: {model.get('pretrained_path') or 'none (random initialisation)'}.",
        f"- Training: {_epochs(trainer)} epochs, batch {data.get('batch_size')}, AdamW lr "
        f"{(cfg.get('optim') or {}).get('lr')}, class-balanced sampler {data.get('balanced_sampler')}, "
        f"{_imbalance_text(cfg.get('loss') or {})}{_averaging_text(trainer)}, Shades of Gray "
        f"{data.get('color_constancy')}, hair removal {data.get('hair_removal')}, "
        f"augmentation `{data.get('augment')}`.",
        *([f"- Test resolution: {resolution}"] if (resolution := test_resolution_line(card)) else []),
        f"- Calibration: {calib.get('method') or 'temperature scaling'}, temperature {_num(calib.get('temperature'))}"
        + _offsets_text(calib.get("class_offsets"), card.get("classes") or [])
        + f" fitted on {calib.get('fitted_on')}; "
        f"ECE {_num(calib.get('ece_before'))} before, {_num(calib.get('ece_after'))} after.",
        f"- Data: {data.get('csv')}; lesion- and patient-grouped split "
        f"{card.get('test_split', {}).get('fractions')}, seed {card.get('test_split', {}).get('seed')}.",
        "",
        "## Test-split metrics (95% bootstrap intervals: patients resampled, else lesions, else images; "
        "the thin/thick AUROC by image)",
        "",
        metrics_md,
        *operating_points_markdown(card),
        *variants_markdown(card),
        *start_weights_markdown(card),
        *lodo_md,
        "## Limitations",
        "",
        *[f"- {item}" for item in card.get("limitations", [])],
        "",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    """Three decimals for numbers, the value itself otherwise (e.g. None when not fitted)."""
    return f"{value:.3f}" if isinstance(value, int | float) else str(value)


def _epochs(trainer: dict[str, Any]) -> Any:
    """``trainer.max_epochs`` of a stored config (``trainer.epochs`` in configs written before the rename)."""
    return trainer.get("max_epochs", trainer.get("epochs"))


def _imbalance_text(loss: dict[str, Any]) -> str:
    """How the stored config's diagnosis loss treats class imbalance."""
    if (loss.get("logit_adjustment") or 0) > 0:
        return f"logit-adjusted loss (tau {loss['logit_adjustment']})"
    return f"class-weighted loss {loss.get('class_weighted')}"


def _averaging_text(trainer: dict[str, Any]) -> str:
    """``, weights averaged (EMA ...)`` when the stored config kept a moving average, else nothing."""
    decay = trainer.get("ema_decay") or 0
    return f", weights averaged (exponential moving average, decay {decay} per step)" if decay > 0 else ""


def _recipe_line(lodo: dict[str, Any]) -> str:

    base = from_dict(LodoConfig, lodo).base_tree()
    model, data, trainer = base.get("model", {}), base.get("data", {}), base.get("trainer", {})
    return (f"`{model.get('backbone')}` at {data.get('img_size')} px, {_epochs(trainer)} epochs, "
            f"recipes {', '.join(lodo.get('variants') or ['ours'])}")


def _offsets_text(offsets: list[float] | None, classes: list[str]) -> str:
    """The per-class calibration offsets, named (empty without offsets)."""
    if not offsets:
        return ""
    return " and offsets " + ", ".join(f"{c} {b:+.2f}" for c, b in zip(classes, offsets, strict=False))


def _lodo_calibration_line(method: str | None) -> str:
    """How the check's runs were calibrated before scoring."""
    if not method:
        return "Each run was scored uncalibrated."
    return (f"Each run was calibrated on its own validation split ({CALIBRATION_METHODS.get(method, method)}), "
            "as export calibrates the bundle.")


def _interrupted_version(cfg: PipelineConfig, stage: str, root: Path, inputs: str) -> int | None:
    """The run version an interrupted ``stage`` (train or byol) left under ``root``, or None for a new one.

    The newest version with a ``last.ckpt`` is resumed only when the stage started it with the same
    inputs (``<work_dir>/<stage>.started.json``, written before the run starts): a rerun after
    changing the recipe starts a new run instead of continuing the old one under the new settings.
    The run the stage's last *finished* record names (current or superseded) is never continued.
    """
    version = latest_resumable_version(root)
    finished = (_done(cfg, stage) or _done(cfg, f"{stage}.superseded") or {}).get("run_dir")
    if version is not None and finished and Path(finished).resolve() == (root / f"version_{version}").resolve():
        log.info("%s: %s is a finished run; starting a new version", stage, finished)
        version = None
    started = _done(cfg, f"{stage}.started")
    if started is None:
        after = -1  # no record (a run older than the record): the newest interrupted run is resumed
    elif started.get("inputs") == inputs:
        after = int(started.get("after", -1))
    else:  # other inputs: none of the runs there so far is this recipe's
        after = max(list_versions(root), default=-1)
    if version is not None and version <= after:
        log.info("%s: version_%d was started with other settings or inputs; starting a new version", stage, version)
        version = None
    path = _record(cfg, f"{stage}.started")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"inputs": inputs, "after": after}) + "\n")
    return version


def run_pipeline(cfg: PipelineConfig, stages: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the requested stages in order, skipping finished ones unless ``force``.

    Returns:
        Each stage's record.
    """
    wanted = stages or cfg.stages
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; valid stages: {list(STAGES)}")
    records: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in wanted:
            records[stage] = _done(cfg, stage)
            if records[stage] is not None and records[stage].get("inputs") != stage_inputs(cfg, stage, records):
                log.warning("stage %s was not asked for, and its record %s was made from other settings or "
                            "inputs: the stages after it use that old result (run it too, or leave --stages out)",
                            stage, _record(cfg, stage))
            continue
        inputs = stage_inputs(cfg, stage, records)
        previous = _done(cfg, stage)
        if previous is not None and not force and previous.get("inputs") == inputs:
            log.info("stage %s already finished (%s); skipping", stage, _record(cfg, stage))
            records[stage] = previous
            continue
        if previous is not None:
            # Forced, or made from other settings or other results: superseded. Kept aside (not
            # deleted) so an interrupted rerun resumes the new run rather than reusing the old one.
            log.info("stage %s: %s", stage, "forced" if force else "its settings or inputs changed; running it again")
            os.replace(_record(cfg, stage), _record(cfg, f"{stage}.superseded"))
        if (stage == "byol" and cfg.byol is None) or (stage == "lodo" and cfg.lodo is None):
            records[stage] = None
            continue
        if stage in ("export", "card") and not records.get("train"):
            raise ConfigError(f"stage {stage} needs a finished train stage ({_record(cfg, 'train')})")
        started = time.monotonic()
        result = _run_stage(cfg, stage, records, inputs)
        # Wall time of the invocation that finished the stage (a resumed stage counts its last part).
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        result["inputs"] = inputs
        records[stage] = _finish(cfg, stage, result)
    return records


def _run_stage(cfg: PipelineConfig, stage: str, records: dict[str, Any], inputs: str) -> dict[str, Any]:
    if stage == "splits":
        return stage_splits(cfg)
    if stage == "byol":
        return stage_byol(cfg, records.get("splits"), inputs)
    if stage == "train":
        return stage_train(cfg, (records.get("byol") or {}).get("export"), records.get("splits"), inputs)
    if stage == "lodo":
        return stage_lodo(cfg, records.get("splits"))
    fn = stage_export if stage == "export" else stage_card
    return fn(cfg, records["train"])
