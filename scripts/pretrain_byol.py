"""BYOL self-supervised pretraining of a backbone on unlabelled images: ``python -m scripts.pretrain_byol``.

Config layers, last wins: built-in defaults, ``--config`` YAML files (``cfgs/byol/*.yaml``),
``--model_cfg`` (a model section such as ``cfgs/model/dermaresnet_se_tiny.yaml``, replacing the config
files' own), the flags below,
then ``key=value`` overrides of any config key (``optim.final_momentum=0.999``). The flags shared with
``scripts.train`` are spelled alike (``scripts/run_flags.py``); the old hyphenated spellings
(``--model-cfg``, ``--max-epochs``...) still work with a deprecation message. Examples::

    python -m scripts.pretrain_byol --config cfgs/byol/cpu_small.yaml --data_dirs ../shared/data/images \
        --exclude_list val_test.txt
    # after an interruption: the same command plus --resume (a changed image setting is refused)
    python -m scripts.pretrain_byol --config cfgs/byol/cpu_small.yaml --data_dirs ../shared/data/images \
        --exclude_list val_test.txt --resume
    python -m scripts.pretrain_byol --export_only runs/byol/cpu_small/version_0/ckpts/last.ckpt
    python -m scripts.train --pretrain_ckpt runs/byol/cpu_small/version_0/backbone.safetensors ...

Exit codes: 0 done, 1 training stopped on a non-finite loss or gradient (see the dump it names),
2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line
from scripts.run_flags import RUN_FLAGS, add_run_flags, flag_values, parse_args

# flag (argparse dest) -> dotted config key (besides the shared RUN_FLAGS); values go through the typed config loader.
FLAG_TO_KEY: dict[str, str] = {
    **RUN_FLAGS,
    "data_dirs": "data.dirs",
    "max_images": "data.max_images",
    "exclude_list": "data.exclude_list",
    "optimizer": "optim.optimizer",
    "base_momentum": "optim.base_momentum",
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (every one optional: defaults come from the config)."""
    p = argparse.ArgumentParser(prog="python -m scripts.pretrain_byol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. optim.final_momentum=0.999)")
    add_run_flags(p, "BYOL YAML")
    p.add_argument("--data_dirs", nargs="+", help="image folders, scanned recursively")
    p.add_argument("--max_images", type=int, help="seeded random subset of this many images (0 = all)")
    p.add_argument("--exclude_list", help="file naming images to leave out (lines, or a CSV with an image column)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--base_momentum", type=float, help="EMA momentum at step 0 (cosine-increased to 1.0)")
    p.add_argument("--resume", action="store_true", help="continue the newest run's ckpts/last.ckpt (new run if none)")
    p.add_argument("--export_only", metavar="CKPT", help="only export the online backbone of this checkpoint")
    p.add_argument("--export_out", help="where --export_only writes (default: <run folder>/backbone.safetensors)")
    return p


def parse_config(argv: list[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """Turn command-line arguments into a resolved :class:`ByolConfig`."""
    from backend.config import cli_layers, from_dict
    from backend.training.byol_config import ByolConfig

    args = parse_args(build_parser(), argv)
    flags = flag_values(args, FLAG_TO_KEY)
    if args.resume:
        flags["resume"] = True
    merged = cli_layers(args.config, args.model_cfg, flags, args.overrides, cls=ByolConfig)
    return from_dict(ByolConfig, merged), args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    import logging

    # INFO shows the image count, the load report of a model.pretrained_path start and the export path.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")

    try:
        cfg, args = parse_config(argv)
        if args.export_only:
            from backend.training.byol_run import export_from_checkpoint

            print(f"exported backbone: {export_from_checkpoint(args.export_only, args.export_out)}")
            return 0
        from backend.training.byol_run import pretrain

        result = pretrain(cfg)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    print(f"run folder: {result.run_dir}")
    print(f"last checkpoint: {result.last_ckpt}")
    print(f"backbone export: {result.export}")
    print(f"optimiser steps: {result.global_step}")
    for key in sorted(result.metrics):
        print(f"  {key}: {result.metrics[key]:.4f}")
    for event in result.nonfinite_events:
        what = "training stopped" if event["action"] == "stop" else "step skipped"
        print(f"{what}: non-finite loss or gradient at step {event['step']}; dump: {event['dump']}", file=sys.stderr)
    return 1 if any(e["action"] == "stop" for e in result.nonfinite_events) else 0


if __name__ == "__main__":
    sys.exit(main())
