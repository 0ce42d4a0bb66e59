"""Ablation study of the default recipe: ``python -m scripts.ablate`` (``--config cfgs/ablation/v1.yaml``, the default).

Trains every variant of the config (a base recipe plus ``key=value`` changes), scores each on the
validation split and prints the table as markdown (also written to ``--markdown``). Finished
variants are kept in ``<output_dir>/results.csv`` and an interrupted variant resumes from its
``last.ckpt``, so the study can be stopped and run again. Never run it in CI: it trains for
minutes per variant on a CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cfgs/ablation/v1.yaml",
                   help="study config (default: v1's; cfgs/ablation/default.yaml is v0.2's)")
    p.add_argument("--markdown", help="also write the table to this markdown file")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the base recipe (e.g. trainer.max_epochs=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pathlib import Path

    from backend.workflows.ablation import ablation_markdown, load_ablation_config, run_ablation

    try:
        results = run_ablation(load_ablation_config(args.config, args.overrides))
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    table = ablation_markdown(results)
    if args.markdown:
        Path(args.markdown).write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
