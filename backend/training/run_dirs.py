"""Run folders ``<root>/version_N``: listing, the next free version, resuming from ``last.ckpt``.

Shared by supervised training, BYOL pretraining and the default-model pipeline, so every run
folder is numbered and resumed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backend.errors import ConfigError


def list_versions(root: Path) -> list[int]:
    """The ``N`` of every ``version_N`` folder under ``root``, ascending (empty when ``root`` is absent)."""
    if not root.is_dir():
        return []
    return sorted(int(p.name[8:]) for p in root.glob("version_*") if p.is_dir() and p.name[8:].isdigit())


def next_version_dir(root: Path) -> Path:
    """The folder of a new run: one past the highest existing version."""
    versions = list_versions(root)
    return root / f"version_{versions[-1] + 1 if versions else 0}"


def last_checkpoint(run_dir: Path) -> Path:
    """Where a run keeps the checkpoint it resumes from."""
    return run_dir / "ckpts" / "last.ckpt"


def resume_version_dir(root: Path, version: int) -> tuple[Path, Path]:
    """``(run folder, last.ckpt)`` of ``version_<version>``.

    Raises:
        ConfigError: When that run has no ``ckpts/last.ckpt``, listing the versions there are.
    """
    run_dir = root / f"version_{version}"
    last = last_checkpoint(run_dir)
    if not last.is_file():
        existing = [f"version_{v}" for v in list_versions(root)] or "none"
        raise ConfigError(f"cannot resume version {version}: {last} does not exist (existing versions: {existing})")
    return run_dir, last


def latest_resumable_version(root: Path) -> int | None:
    """The newest version under ``root`` that has a ``last.ckpt``, or None."""
    for version in reversed(list_versions(root)):
        if last_checkpoint(root / f"version_{version}").is_file():
            return version
    return None


def keep_metrics_csv(run_dir: Path) -> Path | None:
    """Move ``metrics.csv`` to ``metrics.partK.csv`` before a resume; returns the new path (None if absent).

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when a resumed run starts logging,
    which would lose the curves of everything before the resume. Call it from the one process
    that starts the run.
    """
    import os

    metrics_csv = run_dir / "metrics.csv"
    if not metrics_csv.is_file():
        return None
    part = run_dir / f"metrics.part{len(list(run_dir.glob('metrics.part*.csv')))}.csv"
    os.replace(metrics_csv, part)
    return part


def refuse_changed_settings(run_dir: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to resume ``run_dir`` when a setting its checkpoint depends on changed since it started.

    Args:
        run_dir: The run being resumed (named in the error).
        saved: ``{dotted key: value}`` from the run's saved ``config.yaml``.
        current: The same keys from the config the resume was started with.

    Raises:
        ConfigError: Naming every key that differs, with both values.
    """
    diffs = [f"{k}: run has {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise ConfigError(f"cannot resume {run_dir} with other settings: {'; '.join(diffs)} "
                          "(start a new run, or resume with the run's own config.yaml)")
