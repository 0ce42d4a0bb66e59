"""Compare two visits of one lesion: ``python -m scripts.compare_visits --before A.jpg --after B.jpg --output out/``.

The follow-up photo is aligned onto the baseline (rotation, shift and zoom of the camera), the
lesion is segmented in both by the same rule, and the change is measured in the baseline's frame
(see ``docs/followup.md``). Written to ``--output``:

* ``change.json``: ``aligned``, ``area_change`` (relative: 0.44 = 44% larger), ``diameter_change``,
  ``colour_change_delta_e``, ``border_change``, ``risk_before``, ``risk_after``, ``flags`` and more;
* ``comparison.png`` (aligned side by side) and ``change_map.png``, only when the photos could be
  aligned. Both are made from pixels only: no EXIF of the input files reaches them.

A pair that cannot be aligned (different lesions, too little skin texture) is reported with
``aligned: false`` and the reason, exit code 0. An unreadable image file, a model that cannot be
loaded or a photo without any lesion exits with code 2 and a message naming the file. Examples::

    python -m scripts.compare_visits --before visit1.jpg --after visit2.jpg --output followup/
    python -m scripts.compare_visits --before a.png --after b.png --output out/ --no-model
"""

from __future__ import annotations

import argparse
import sys

from backend.errors import ConfigError
from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.compare_visits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="baseline image (the earlier visit)")
    p.add_argument("--after", required=True, help="follow-up image of the same lesion")
    p.add_argument("--output", required=True, help="folder for change.json, comparison.png and change_map.png")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", help="model bundle folder or .ckpt for risk (default: the bundled default model)")
    group.add_argument("--no-model", action="store_true", help="measure the change only, without the model's risk")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 also when the pair could not be aligned).

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    from backend.followup.report import compare_files
    from backend.model_store import DEFAULT_MODEL_DIR, describe_model_dir

    try:
        model = None if args.no_model else args.model
        if not args.no_model and model is None:
            status = describe_model_dir(DEFAULT_MODEL_DIR)
            if not status.available:
                raise ConfigError(f"no default model ({status.reason}); pass --model or --no-model")
            model = str(DEFAULT_MODEL_DIR)
        result, written = compare_files(args.before, args.after, args.output, model=model)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    if not result.aligned:
        print(f"{result.reason}; no overlay was made", file=sys.stderr)
    for flag in result.flags if result.aligned else []:
        print(f"- {flag}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
