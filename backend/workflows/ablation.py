"""Ablation study: one base recipe, named variants of ``key=value`` overrides, one table of figures.

``python -m scripts.ablate --config cfgs/ablation/v1.yaml`` trains every variant with
:func:`backend.workflows.study_runs.train_once` (so an interrupted study resumes, and a variant equal
to another recipe is not trained twice) and scores each best checkpoint on the **validation**
split, never the test split, so choosing the default recipe from this table does not leak the test
figures. Variants listed in ``tta`` are also scored with test-time augmentation, which needs no
training. The results are appended to ``<output_dir>/results.csv`` one variant at a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from backend.config import from_dict, merge_layers, parse_overrides, read_yaml
from backend.errors import ConfigError
from backend.evaluation.split_eval import predict_rows, score_rows
from backend.files import atomic_write_text
from backend.inference.predictor import Predictor
from backend.training.config import ExperimentConfig
from backend.workflows.study_runs import StudyConfig, recipe, recipe_key, split_rows, train_once

log = logging.getLogger(__name__)

#: Metrics reported per variant (names as in :func:`backend.evaluation.model_card.card_metrics`).
METRICS = ("auroc_malignant", "balanced_accuracy", "auroc_macro", "sensitivity_at_80_specificity")


@dataclass
class AblationConfig(StudyConfig):
    """``cfgs/ablation/*.yaml``: a :class:`StudyConfig` plus the TTA rows and interval size.

    Attributes:
        tta: Variants also scored with 8-fold test-time augmentation (no retraining).
        n_boot: Bootstrap resamples for the interval of the headline metric.
    """

    tta: list[str] = field(default_factory=list)
    n_boot: int = 200

    def validate(self) -> None:
        """Every variant must parse into a valid recipe; TTA rows must name a variant."""
        self.check_variants("")
        unknown = [name for name in self.tta if name not in self.variants]
        if unknown:
            raise ConfigError(f"tta: {unknown} are not variants (variants: {list(self.variants)})")


def load_ablation_config(path: str | Path, overrides: list[str] | None = None) -> AblationConfig:
    """Read an ablation YAML; ``overrides`` apply to the base recipe of every variant."""
    raw = read_yaml(path)
    raw["base"] = merge_layers([raw.get("base") or {}, parse_overrides(overrides or [])], ExperimentConfig)
    return from_dict(AblationConfig, raw)


def score_checkpoint(ckpt: str | Path, rows: pd.DataFrame, tta: bool, n_boot: int) -> dict[str, Any]:
    """Validation figures of one checkpoint; the headline malignant AUROC gets a 95% interval."""
    pred = predict_rows(Predictor.from_checkpoint(ckpt), rows, tta=tta)
    figures = score_rows(pred, n_boot=n_boot, only=METRICS)
    interval = figures["auroc_malignant"]
    return {**{m: figures[m]["value"] for m in METRICS}, "auroc_malignant_lo": interval["lo"],
            "auroc_malignant_hi": interval["hi"], "val_rows": len(pred.rows)}


def run_ablation(cfg: AblationConfig) -> pd.DataFrame:
    """Train and score every variant whose row in ``results.csv`` is missing or stale; returns the table.

    A row is reused only when it was made from the variant's current recipe (its ``recipe`` key, which
    covers every setting and the input files' contents); the table holds the configured variants only.
    """
    cfg.validate()
    out = Path(cfg.output_dir) / "results.csv"
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=["variant"])
    previous = {str(r["variant"]): r for r in done.to_dict(orient="records")}
    rows = []
    wanted = [(name, False) for name in cfg.variants] + [(name, True) for name in cfg.tta]
    recipes = {name: recipe(cfg.base_tree(), cfg.variants[name]) for name in cfg.variants}
    # Before any training: a variant whose start weights are missing would fail hours into the study.
    missing = [f"{name}: {exp.model.pretrained_path}" for name, exp in recipes.items()
               if exp.model.pretrained_path and not Path(exp.model.pretrained_path).is_file()]
    if missing:
        raise ConfigError(f"start weights not found for {'; '.join(missing)} (make them first, e.g. the BYOL run "
                          "its config comment names, or leave the variant out)")
    for name, tta in wanted:
        label = f"{name} + TTA" if tta else name
        exp = recipe(cfg.base_tree(), cfg.variants[name])  # a fresh one: training fills in its run folder
        # The row's figures depend on the bootstrap too: another n_boot scores it again.
        key = f"{recipe_key(exp)}-boot{cfg.n_boot}"
        old = previous.get(label)
        if old is not None and str(old.get("recipe")) == key:
            rows.append(old)
            continue
        run = train_once(exp, cfg.output_dir, name)
        figures = score_checkpoint(run.best_ckpt, split_rows(run, "val"), tta=tta, n_boot=cfg.n_boot)
        rows.append({"variant": label, "changes": cfg.describe(name),
                     **figures, "run_dir": str(run.run_dir), "recipe": key})
        log.info("ablation %s: %s", label, figures)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, pd.DataFrame(rows).to_csv(index=False))
    table = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False))
    return table


def ablation_markdown(results: pd.DataFrame, baseline: str = "baseline") -> str:
    """The study as a markdown table, with each variant's malignant-AUROC change from ``baseline``."""
    base = results.loc[results["variant"] == baseline, "auroc_malignant"]
    ref = float(base.iloc[0]) if len(base) else float("nan")
    lines = ["| variant | change | malignant AUROC (95% CI) | Δ vs baseline | balanced acc. | macro AUROC "
             "| sens. @ 80% spec. |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.fillna({"changes": ""}).itertuples(index=False):
        delta = "n/a" if math.isnan(ref) else f"{r.auroc_malignant - ref:+.3f}"
        lines.append(
            f"| {r.variant} | {r.changes} | {r.auroc_malignant:.3f} ({r.auroc_malignant_lo:.3f}-"
            f"{r.auroc_malignant_hi:.3f}) | {delta} | {r.balanced_accuracy:.3f} | "
            f"{r.auroc_macro:.3f} | {r.sensitivity_at_80_specificity:.3f} |"
        )
    return "\n".join(lines) + "\n"
