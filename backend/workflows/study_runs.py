"""Training runs for studies (ablations, leave-one-dataset-out), each trained once per recipe.

A study trains many short runs that differ by a few config keys. :func:`train_once` names each run
folder after a hash of its resolved recipe, so a recipe that two studies share (the ablation
baseline is also the in-domain reference of the leave-one-dataset-out check) is trained once, and
an interrupted study resumes the unfinished run from its ``last.ckpt`` when started again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.config import from_dict, merge_layers, parse_overrides, read_yaml, to_dict
from backend.data.formats import load_table
from backend.data.splits import read_splits
from backend.errors import ConfigError
from backend.files import atomic_write_text, sha256_file
from backend.training.config import ExperimentConfig
from backend.training.run import fit
from backend.training.run_dirs import latest_resumable_version

log = logging.getLogger(__name__)

#: Keys that say where a run goes, not what it learns: left out of the recipe hash.
_PLACE_KEYS = ("log_dir", "experiment_name", "resume_version")
DONE_FILE = "done.json"


@dataclass
class TrainedRun:
    """A finished study run.

    Attributes:
        name: The study's name for it (e.g. the ablation variant).
        run_dir: Its version folder (config.yaml, splits.csv, metrics.csv, ckpts/).
        best_ckpt: The checkpoint with the best validation ``trainer.monitor``.
    """

    name: str
    run_dir: Path
    best_ckpt: Path


@dataclass
class StudyConfig:
    """What every study config has: a base recipe and named variants of it.

    Attributes:
        base_file: YAML of the base recipe (e.g. ``cfgs/train/study.yaml``), shared by studies.
        base: Inline recipe keys (an :class:`ExperimentConfig` mapping) layered on ``base_file``.
        variants: Variant name -> ``key=value`` overrides of the base (``[]`` is the base itself).
        descriptions: Variant name -> one line for the results table.
        output_dir: Folder of the study's runs (shared between studies, see :func:`train_once`).
    """

    base_file: str | None = None
    base: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, list[str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    output_dir: str = "runs/studies"

    def base_tree(self) -> dict[str, Any]:
        """The base recipe: ``base_file`` with ``base`` on top."""
        return merge_layers([read_yaml(self.base_file) if self.base_file else {}, self.base], ExperimentConfig)

    def check_variants(self, section: str) -> None:
        """Every variant must parse into a valid recipe; errors name ``<section>.variants.<name>``."""
        if not self.variants:
            raise ConfigError(f"{section}variants: name at least one variant (e.g. 'baseline: []')")
        for name, overrides in self.variants.items():
            try:
                recipe(self.base_tree(), overrides)
            except ConfigError as err:
                raise ConfigError(f"{section}variants.{name}: {err}") from None

    def describe(self, name: str) -> str:
        """The table line of variant ``name``: its description, else its overrides."""
        return self.descriptions.get(name, " ".join(self.variants.get(name, [])))


def recipe(base: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The typed experiment config of ``base`` with ``key=value`` overrides applied.

    Raises:
        ConfigError: An unknown key or a bad value, named.
    """
    return from_dict(ExperimentConfig, merge_layers([base, parse_overrides(list(overrides))], ExperimentConfig))


#: Config keys naming input files: their contents, not only their paths, shape a run.
_INPUT_FILES = (("data", "csv"), ("data", "split_csv"), ("data", "metadata_csv"), ("model", "pretrained_path"))


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)  # cached per (path, size, mtime): a study hashes the same inputs per variant


def _content(path: Any) -> str | None:
    """SHA-256 of an input file's bytes (None when the key is unset or the file is absent)."""
    if not path or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def recipe_key(exp: ExperimentConfig) -> str:
    """Eight hex digits that change whenever anything that shapes training changes.

    That includes the contents of the input files (label table, split, metadata, start weights):
    a split file rewritten in place must not reuse a run trained on the old one, whose training
    images may now be test images.
    """
    tree = {k: v for k, v in to_dict(exp).items() if k not in _PLACE_KEYS}
    tree["input_files"] = {f"{section}.{key}": _content(tree.get(section, {}).get(key))
                           for section, key in _INPUT_FILES}
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


def train_once(exp: ExperimentConfig, root: str | Path, name: str) -> TrainedRun:
    """Train ``exp`` under ``root/<name>-<recipe key>``, or reuse/resume a run of the same recipe.

    Args:
        exp: The resolved recipe (its ``log_dir`` and ``experiment_name`` are replaced).
        root: Folder of all study runs.
        name: Readable prefix of the run folder.

    Returns:
        The finished run.
    """
    key = recipe_key(exp)
    folder = f"{name}-{key}"
    exp.log_dir, exp.experiment_name = str(root), folder
    # The same recipe under another study's name (e.g. the ablation baseline) counts as trained.
    for done in sorted(Path(root).glob(f"*-{key}/{DONE_FILE}")):
        record = json.loads(done.read_text(encoding="utf-8"))
        log.info("study run %s: recipe %s already trained in %s", name, key, record["run_dir"])
        return TrainedRun(name, Path(record["run_dir"]), Path(record["best_ckpt"]))
    done = Path(root) / folder / DONE_FILE
    exp.resume_version = latest_resumable_version(Path(root) / folder)
    result = fit(exp, test=False)
    if result.best_ckpt is None:
        raise ConfigError(f"study run {name} in {result.run_dir} produced no best.ckpt")

    atomic_write_text(done, json.dumps({"run_dir": str(result.run_dir), "best_ckpt": str(result.best_ckpt)}) + "\n")
    return TrainedRun(name, result.run_dir, result.best_ckpt)


def split_rows(run: TrainedRun, split: str) -> Any:
    """The lesion-table rows of one split of a finished run (read from its saved config and splits)."""
    data = from_dict(ExperimentConfig, read_yaml(run.run_dir / "config.yaml")).data
    table = _lesion_table(data.csv, data.img_dir, data.format, data.metadata_csv, data.skip_missing)
    splits = read_splits(run.run_dir / "splits.csv", table).reindex(table.index)
    return table[splits == split].reset_index(drop=True)


@functools.lru_cache(maxsize=4)
def _lesion_table(csv: str, img_dir: str | None, fmt: str, metadata_csv: str | None, skip_missing: bool) -> Any:
    """The lesion table of a label file, read once per study (every variant scores the same file)."""
    return load_table(csv, img_dir=img_dir, format=fmt, metadata_csv=metadata_csv, skip_missing=skip_missing)
