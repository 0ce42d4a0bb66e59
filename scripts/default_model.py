"""Build the bundled default model: ``python -m scripts.default_model [--stages ...] [--force]``.

Runs the stages of ``cfgs/default.yaml`` (the grouped split, BYOL when configured, supervised
training, bundle export with calibration, model card on the test split, leave-one-dataset-out
check) and writes ``assets/models/default/``. A finished stage is skipped while its settings, the
files they name (label table, start weights, recipes; not the image folders) and the results it
used are unchanged, else it runs again, and so does every later stage whose inputs changed. An
interrupted training stage resumes from its ``last.ckpt`` when started with the same inputs, so
the recipe can be stopped at any moment and run again. With ``make default-model`` (which first
copies the v0.2 baseline from git history). Never run it in CI: it trains for hours on a CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cfgs/default.yaml", help="pipeline config (default: cfgs/default.yaml)")
    p.add_argument("--stages", nargs="+", help="run only these stages, of: splits byol train export card lodo")
    p.add_argument("--force", action="store_true", help="rerun the stages even if they finished before")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from backend.workflows.pipeline import load_pipeline_config, run_pipeline

    try:
        cfg = load_pipeline_config(args.config)
        records = run_pipeline(cfg, stages=args.stages, force=args.force)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    for stage, record in records.items():
        print(f"{stage:>7}: {record if record is not None else 'not run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
