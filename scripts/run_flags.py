"""The flags every training CLI shares (``scripts/train.py``, ``scripts/pretrain_byol.py``): one spelling each.

Flags are spelled with underscores, as the config keys they set (``--max_epochs`` sets
``trainer.max_epochs``). Old spellings still work, with a deprecation message: the hyphenated
ones BYOL used (``--model-cfg``, ``--max-epochs``...) and the supervised CLI's ``--epochs`` and
``--output_dir`` (:data:`LEGACY_FLAGS`). Only argparse and the config helpers here: ``--help`` loads nothing heavy.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import Any

from backend.config import rename_legacy_flags

#: Flag (argparse dest) -> dotted config key, for the settings both training configs have.
RUN_FLAGS: dict[str, str] = {
    "img_size": "data.img_size",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "pretrain_ckpt": "model.pretrained_path",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "max_epochs": "trainer.max_epochs",
    "max_steps": "trainer.max_steps",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "strategy": "trainer.strategy",
    "num_nodes": "trainer.num_nodes",
    "precision": "trainer.precision",
    "gradient_clip_val": "trainer.gradient_clip_val",
    "accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "log_dir": "log_dir",
    "experiment_name": "experiment_name",
    "seed": "seed",
    "resume_version": "resume_version",
}

#: Old flag -> current flag (besides any ``--a-b`` spelling of an ``--a_b`` flag).
LEGACY_FLAGS: dict[str, str] = {
    "--epochs": "--max_epochs",
    "--max-epochs": "--max_epochs",
    "--output_dir": "--log_dir",
    "--output-dir": "--log_dir",
    "--model-cfg": "--model_cfg",
}


def add_run_flags(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--config``, ``--model_cfg`` and every flag of :data:`RUN_FLAGS` to ``p``.

    Args:
        p: The parser.
        what: What ``--config`` files are, for the help text (e.g. ``experiment YAML``).
    """
    p.add_argument("--config", action="append", default=[], help=f"{what} (repeatable, layered in order)")
    p.add_argument("--model_cfg", help="model-section YAML, e.g. cfgs/model/dermaresnet_se_tiny.yaml")
    p.add_argument("--img_size", type=int, help="input side in pixels (data.img_size; the network is built for it)")
    p.add_argument("--batch_size", type=int)
    p.add_argument("--num_workers", type=int)
    p.add_argument("--pretrain_ckpt", help="backbone weights (BYOL export, safetensors or .pt) to start from")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight_decay", type=float)
    p.add_argument("--max_epochs", type=int)
    p.add_argument("--max_steps", type=int, help="stop after this many optimiser steps (-1 = no limit)")
    p.add_argument("--accelerator", help="cpu, gpu, auto")
    p.add_argument("--devices", help="auto, a count, or ids like 0,1")
    p.add_argument("--strategy", help="auto, ddp, ddp_spawn, ...")
    p.add_argument("--num_nodes", type=int)
    p.add_argument("--precision", choices=["32", "16-mixed", "bf16-mixed"])
    p.add_argument("--gradient_clip_val", type=float)
    p.add_argument("--accumulate_grad_batches", type=int)
    p.add_argument("--log_dir", help="root of run folders: <log_dir>/<experiment_name>/version_N")
    p.add_argument("--experiment_name")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume_version", type=int, help="continue <log_dir>/<experiment_name>/version_N")


#: A ``key=value`` config override (``optim.lr=3e-4``), as opposed to a path or a flag value.
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the flags, with ``key=value`` overrides accepted anywhere among them.

    Old flag spellings are mapped to the current ones first (with a deprecation message). Overrides
    may come before, between or after flags (``optim.lr=3e-4 --max_epochs 1 trainer.fast_dev_run=true``);
    one that a list flag (``--data_dirs a b``) swallowed is given back to the overrides.
    """
    known = [s for action in p._actions for s in action.option_strings]
    tokens = rename_legacy_flags(list(sys.argv[1:] if argv is None else argv), known, LEGACY_FLAGS)
    args = p.parse_intermixed_args(tokens)
    if hasattr(args, "overrides"):
        pool = Counter(args.overrides)
        for action in p._actions:
            values = getattr(args, action.dest, None)
            if action.option_strings and action.nargs in ("+", "*") and isinstance(values, list):
                swallowed = [v for v in values if isinstance(v, str) and _OVERRIDE.match(v)]
                if swallowed:
                    setattr(args, action.dest, [v for v in values if v not in swallowed] or None)
                    pool.update(swallowed)
        # In the order they were written: the last override of a key wins, wherever it stood.
        ordered = []
        for token in tokens:
            if pool[token] > 0:
                ordered.append(token)
                pool[token] -= 1
        args.overrides = ordered
    return args


def flag_values(args: argparse.Namespace, table: dict[str, str]) -> dict[str, Any]:
    """``{dotted config key: value}`` of the flags in ``table`` (None where a flag was not given)."""
    return {key: getattr(args, dest) for dest, key in table.items()}
