"""The default-model recipe as resumable stages: BYOL -> supervised -> bundle -> model card.

``make default-model`` (``python -m scripts.default_model``) runs :func:`run_pipeline` on
``cfgs/default.yaml``. Each stage records what it produced in ``<work_dir>/<stage>.json`` when it
finishes; a rerun skips finished stages and resumes an unfinished training stage from its
``last.ckpt``, so the recipe can be stopped at any moment and continued later, stage by stage
(``--stages train export``) or whole.

Stages:

* ``byol``: self-supervised pretraining of the backbone (:func:`backend.training.byol_run.pretrain`).
* ``train``: supervised multi-task training started from the BYOL export when there is one.
* ``export``: the bundle (weights + card), temperature fitted on the validation split, OOD
  statistics on the training split (:func:`backend.io.bundle.export_bundle`).
* ``card``: test-split metrics with 95% bootstrap intervals and subgroup metrics, written into the
  bundle's card (``test_metrics``) and as markdown next to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.config import from_dict, read_yaml
from backend.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("byol", "train", "export", "card")


@dataclass
class PipelineConfig:
    """``cfgs/default.yaml``: the stages and their own configs.

    Attributes:
        name: Model name written into the card.
        version: Model version written into the card.
        bundle_dir: Where the bundle goes (``assets/models/default`` is what the app loads).
        work_dir: Stage records (``<stage>.json``).
        stages: Stages to run, in order (a subset of ``byol, train, export, card``).
        byol: A :class:`backend.training.byol_config.ByolConfig` mapping; None skips pretraining.
        supervised: A :class:`backend.training.config.ExperimentConfig` mapping.
        n_boot: Bootstrap resamples for the model card's intervals.
        card_markdown: Extra copy of the card's markdown (e.g. under ``docs/``); None for none.
        onnx: Also export ``model.onnx`` into the bundle.
        status: One paragraph on where this model stands (shown at the top of the card).
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

    def validate(self) -> None:
        """Reject unknown stages."""
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown {unknown}; valid stages: {list(STAGES)}")


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read ``cfgs/default.yaml`` and check that its stage configs are valid too."""
    from backend.training.config import ExperimentConfig

    cfg = from_dict(PipelineConfig, read_yaml(path))
    from_dict(ExperimentConfig, cfg.supervised)
    if cfg.byol is not None:
        from backend.training.byol_config import ByolConfig

        from_dict(ByolConfig, cfg.byol)
    return cfg


def _record(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.work_dir) / f"{stage}.json"


def _done(cfg: PipelineConfig, stage: str) -> dict[str, Any] | None:
    path = _record(cfg, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _finish(cfg: PipelineConfig, stage: str, result: dict[str, Any]) -> dict[str, Any]:
    from backend.io.checkpoint import atomic_write_text

    path = _record(cfg, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    log.info("stage %s finished: %s", stage, result)
    return result


def stage_byol(cfg: PipelineConfig) -> dict[str, Any]:
    """Pretrain (or resume pretraining) and export the backbone."""
    from backend.training.byol_config import ByolConfig
    from backend.training.byol_run import pretrain

    byol = from_dict(ByolConfig, {**cfg.byol, "resume": True})
    result = pretrain(byol)
    return {"run_dir": str(result.run_dir), "export": str(result.export), "global_step": result.global_step}


def stage_train(cfg: PipelineConfig, pretrained: str | None) -> dict[str, Any]:
    """Supervised training from the BYOL export (when there is one), resuming an interrupted run."""
    from backend.training.config import ExperimentConfig
    from backend.training.run import fit

    exp = from_dict(ExperimentConfig, cfg.supervised)
    if pretrained:
        exp.model.pretrained_path = pretrained
    from backend.training.run_dirs import latest_resumable_version

    exp.resume_version = latest_resumable_version(Path(exp.output_dir) / exp.experiment_name)
    result = fit(exp, test=False)
    if result.best_ckpt is None:
        raise ConfigError(f"training in {result.run_dir} produced no best.ckpt")
    return {"run_dir": str(result.run_dir), "best_ckpt": str(result.best_ckpt),
            "metrics": {k: v for k, v in result.metrics.items() if k.startswith("val/")}}


def stage_export(cfg: PipelineConfig, train: dict[str, Any]) -> dict[str, Any]:
    """Bundle the best checkpoint with calibration and OOD statistics fitted on its run's splits."""
    from backend.io.bundle import export_bundle
    from backend.training.config import ExperimentConfig

    exp = from_dict(ExperimentConfig, cfg.supervised)
    run_dir = Path(train["run_dir"])
    result = export_bundle(
        train["best_ckpt"], cfg.bundle_dir, name=cfg.name, version=cfg.version, csv=exp.data.csv,
        img_dir=exp.data.img_dir, splits_csv=run_dir / "splits.csv", progress=True, onnx=cfg.onnx,
    )
    return {"bundle_dir": str(result.bundle_dir), "skipped_images": len(result.skipped),
            "calibration": result.card.get("calibration")}


def stage_card(cfg: PipelineConfig, train: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the bundle on the test split and write the metrics into its card and markdown."""
    import numpy as np

    from backend.data.dataset import encode_targets
    from backend.data.formats import load_table
    from backend.data.splits import read_splits
    from backend.evaluation.model_card import card_metrics, metrics_markdown, subgroup_metrics
    from backend.inference.predictor import Predictor
    from backend.io.bundle import read_card, write_card
    from backend.training.config import ExperimentConfig

    exp = from_dict(ExperimentConfig, cfg.supervised)
    table = load_table(exp.data.csv, img_dir=exp.data.img_dir)
    splits = read_splits(Path(train["run_dir"]) / "splits.csv", table).reindex(table.index)
    test = table[splits == "test"].reset_index(drop=True)
    predictor = Predictor.from_checkpoint(cfg.bundle_dir)
    meta = [{"age_approx": a, "sex": s, "anatom_site_general": site} for a, s, site in
            zip(test["age_approx"], test["sex"], test["anatom_site_general"], strict=True)]
    raw, kept, skipped = predictor.raw_outputs(test["image"].tolist(), meta, progress=True)
    rows = test.iloc[kept].reset_index(drop=True)
    t = encode_targets(rows)
    groups = rows["patient_id"].fillna(rows["lesion_id"]).to_numpy(dtype=object)
    metrics = card_metrics(t["diagnosis"], raw.probs, t["label"], raw.thickness_mm, t["thickness_lo"],
                           t["thickness_hi"], groups=groups, n_boot=cfg.n_boot)
    subgroups = subgroup_metrics(rows, t["diagnosis"], raw.probs, t["label"])
    card = read_card(cfg.bundle_dir)
    card["test_metrics"] = metrics
    card["test_subgroups"] = subgroups.replace({np.nan: None}).to_dict(orient="records")
    if cfg.status:
        card["status"] = cfg.status
    card["test_split"] = {"rows": len(rows), "unreadable": len(skipped), "source": str(exp.data.csv),
                          "grouping": "lesion_id and patient_id never cross splits",
                          "fractions": {"val": exp.data.split.val_frac, "test": exp.data.split.test_frac},
                          "seed": exp.data.split.seed}
    write_card(cfg.bundle_dir, card)
    text = render_card_markdown(card, metrics_markdown(metrics, subgroups))
    (Path(cfg.bundle_dir) / "MODEL_CARD.md").write_text(text, encoding="utf-8")
    if cfg.card_markdown:
        Path(cfg.card_markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.card_markdown).write_text(text, encoding="utf-8")
    return {"test_rows": len(rows), "balanced_accuracy": metrics["balanced_accuracy"]["value"],
            "auroc_malignant": metrics["auroc_malignant"]["value"]}


def render_card_markdown(card: dict[str, Any], metrics_md: str) -> str:
    """The human-readable model card."""
    cfg = card.get("config", {})
    model, data = cfg.get("model", {}), cfg.get("data", {})
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
        f"{model.get('use_metadata')}; classes {', '.join(card.get('classes', []))}.",
        f"- Pretrained start: {model.get('pretrained_path') or 'none (random initialisation)'}.",
        f"- Calibration: temperature {calib.get('temperature')} fitted on {calib.get('fitted_on')}; "
        f"ECE {calib.get('ece_before')} before, {calib.get('ece_after')} after.",
        f"- Data: {data.get('csv')}; lesion- and patient-grouped split "
        f"{card.get('test_split', {}).get('fractions')}, seed {card.get('test_split', {}).get('seed')}.",
        "",
        "## Test-split metrics (95% bootstrap intervals, patients resampled)",
        "",
        metrics_md,
        "## Limitations",
        "",
        *[f"- {item}" for item in card.get("limitations", [])],
        "",
    ]
    return "\n".join(lines)


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
            continue
        previous = None if force else _done(cfg, stage)
        if previous is not None:
            log.info("stage %s already finished (%s); skipping", stage, _record(cfg, stage))
            records[stage] = previous
            continue
        if stage == "byol":
            if cfg.byol is None:
                records[stage] = None
                continue
            records[stage] = _finish(cfg, stage, stage_byol(cfg))
        elif stage == "train":
            pretrained = (records.get("byol") or {}).get("export")
            records[stage] = _finish(cfg, stage, stage_train(cfg, pretrained))
        else:
            if not records.get("train"):
                raise ConfigError(f"stage {stage} needs a finished train stage ({_record(cfg, 'train')})")
            fn = stage_export if stage == "export" else stage_card
            records[stage] = _finish(cfg, stage, fn(cfg, records["train"]))
    return records
