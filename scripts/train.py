r"""Train the multi-task lesion model: ``python -m scripts.train [flags] [key=value ...]``.

Config layers, last wins: built-in defaults, ``--config`` YAML files, ``--model_cfg`` (the model
section, e.g. ``cfgs/model/dermaresnet_se_18.yaml``, replacing the config files' own), the
flags below, then ``key=value`` overrides of any config key (``optim.lr=3e-4``), anywhere among
the flags. The flags shared with ``scripts.pretrain_byol`` are spelled alike
(``scripts/run_flags.py``); old spellings (``--epochs``, ``--output_dir``) still work with a
deprecation message. Examples::

    python -m scripts.train --csv ../shared/data/labels.csv --img_dir ../shared/data/images \
        --model_cfg cfgs/model/dermaresnet_se_tiny.yaml --img_size 128 --max_epochs 10
    # after an interruption: the same command plus --resume_version N (a changed model or data
    # setting is refused, naming it; more epochs are fine)
    python -m scripts.train --csv ../shared/data/labels.csv --img_dir ../shared/data/images \
        --model_cfg cfgs/model/dermaresnet_se_tiny.yaml --img_size 128 --max_epochs 12 --resume_version 0
    srun python -m scripts.train --accelerator gpu --devices 4 --num_nodes 2 --strategy ddp ...
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line
from scripts.run_flags import RUN_FLAGS, add_run_flags, flag_values, parse_args

# flag -> dotted config key (besides the shared RUN_FLAGS); values are passed through the typed config loader.
FLAG_TO_KEY: dict[str, str] = {
    **RUN_FLAGS,
    "csv": "data.csv",
    "img_dir": "data.img_dir",
    "early_stop": "trainer.early_stop",
    "skip_missing": "data.skip_missing",
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (every one optional: defaults come from the config)."""
    p = argparse.ArgumentParser(prog="python -m scripts.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. optim.lr=3e-4)")
    add_run_flags(p, "experiment YAML")
    p.add_argument("--csv", help="label table, or an isic-cli download folder")
    p.add_argument("--img_dir", help="folder of the images the table names")
    p.add_argument("--early_stop", type=int, help="early-stopping patience in epochs on val balanced accuracy")
    p.add_argument("--skip-missing", "--skip_missing", dest="skip_missing", action="store_true", default=None,
                   help="drop rows whose image file is missing (one warning with the count) instead of failing")
    p.add_argument("--no_test", action="store_true", help="skip the test-split evaluation after training")
    return p


def parse_config(argv: list[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """Turn command-line arguments into a resolved :class:`ExperimentConfig`."""
    from backend.config import cli_layers, from_dict
    from backend.training.config import ExperimentConfig

    args = parse_args(build_parser(), argv)
    merged = cli_layers(args.config, args.model_cfg, flag_values(args, FLAG_TO_KEY), args.overrides,
                        cls=ExperimentConfig)
    return from_dict(ExperimentConfig, merged), args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    import logging

    # INFO from backend (e.g. the matched/missing report of --pretrain_ckpt) reaches the user.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    try:
        cfg, args = parse_config(argv)
        from backend.training.run import fit

        result = fit(cfg, test=not args.no_test)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    print(f"run folder: {result.run_dir}")
    print(f"best checkpoint: {result.best_ckpt}")
    for key in sorted(result.metrics):
        print(f"  {key}: {result.metrics[key]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
