"""BYOL self-supervised pretraining of a backbone on unlabelled images: ``python -m scripts.pretrain_byol``.

Config layers, last wins: built-in defaults, ``--config`` YAML files (``cfgs/byol/*.yaml``),
``--model-cfg`` (a model section such as ``cfgs/model/dermaresnet_se_tiny.yaml``), the flags below,
then ``key=value`` overrides of any config key (``optim.final_momentum=0.999``). Examples::

    python -m scripts.pretrain_byol --config cfgs/byol/cpu_small.yaml --data-dirs ../shared/data/images
    python -m scripts.pretrain_byol --config cfgs/byol/cpu_small.yaml --data-dirs ../shared/data/images --resume
    python -m scripts.pretrain_byol --export-only runs/byol/cpu_small/version_0/ckpts/last.ckpt
    python -m scripts.train --pretrain_ckpt runs/byol/cpu_small/version_0/backbone.safetensors ...

Exit codes: 0 done, 1 training stopped on a non-finite loss or gradient (see the dump it names),
2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# flag (argparse dest) -> dotted config key; values go through the typed config loader.
FLAG_TO_KEY: dict[str, str] = {
    "data_dirs": "data.dirs",
    "img_size": "data.img_size",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "max_images": "data.max_images",
    "exclude_list": "data.exclude_list",
    "max_epochs": "trainer.max_epochs",
    "max_steps": "trainer.max_steps",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "strategy": "trainer.strategy",
    "num_nodes": "trainer.num_nodes",
    "precision": "trainer.precision",
    "gradient_clip_val": "trainer.gradient_clip_val",
    "accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "base_momentum": "optim.base_momentum",
    "log_dir": "log_dir",
    "experiment_name": "experiment_name",
    "seed": "seed",
    "resume_version": "resume_version",
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (every one optional: defaults come from the config)."""
    p = argparse.ArgumentParser(prog="python -m scripts.pretrain_byol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. optim.final_momentum=0.999)")
    p.add_argument("--config", action="append", default=[], help="BYOL YAML (repeatable, layered in order)")
    p.add_argument("--model-cfg", help="model-section YAML, e.g. cfgs/model/dermaresnet_se_tiny.yaml")
    p.add_argument("--data-dirs", nargs="+", help="image folders, scanned recursively")
    p.add_argument("--max-images", type=int, help="seeded random subset of this many images (0 = all)")
    p.add_argument("--exclude-list", help="file naming images to leave out (lines, or a CSV with an image column)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--accelerator", help="cpu, gpu, auto")
    p.add_argument("--devices", help="auto, a count, or ids like 0,1")
    p.add_argument("--strategy", help="auto, ddp, ddp_spawn, ...")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--precision", choices=["32", "16-mixed", "bf16-mixed"])
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--base-momentum", type=float, help="EMA momentum at step 0 (cosine-increased to 1.0)")
    p.add_argument("--gradient-clip-val", type=float)
    p.add_argument("--accumulate-grad-batches", type=int)
    p.add_argument("--log-dir", help="root of run folders: <log-dir>/<experiment-name>/version_N")
    p.add_argument("--experiment-name")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the newest run's ckpts/last.ckpt (new run if none)")
    p.add_argument("--resume-version", type=int, help="continue <log-dir>/<experiment-name>/version_N")
    p.add_argument("--export-only", metavar="CKPT", help="only export the online backbone of this checkpoint")
    p.add_argument("--export-out", help="where --export-only writes (default: <run folder>/backbone.safetensors)")
    return p


def parse_config(argv: list[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """Turn command-line arguments into a resolved :class:`ByolConfig`."""
    from backend.config import cli_layers, from_dict
    from backend.training.byol_config import ByolConfig

    args = build_parser().parse_args(argv)
    flags = {key: getattr(args, dest) for dest, key in FLAG_TO_KEY.items()}
    if args.resume:
        flags["resume"] = True
    merged = cli_layers(args.config, args.model_cfg, flags, args.overrides)
    return from_dict(ByolConfig, merged), args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    import logging

    from backend.errors import DermaLensError

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
    except DermaLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
