r"""Write a lesion/patient-grouped, diagnosis-stratified split CSV: ``python -m scripts.make_splits``.

Example::

    python -m scripts.make_splits --csv ../shared/data/labels.csv --output splits.csv
    python -m scripts.make_splits --csv ISIC_2019_Training_GroundTruth.csv --img_dir images \
        --skip-missing --val_frac 0.1 --test_frac 0.2 --seed 7 --output splits.csv

The output (``image_id,split`` + diagnosis, lesion_id, patient_id) is what ``data.split_csv``
reuses, so several runs can share one split.
"""

from __future__ import annotations

import argparse
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.make_splits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="label table (any registered format) or download folder")
    p.add_argument("--img_dir", help="folder of the images (default: images/ beside the CSV, else its folder)")
    p.add_argument("--format", default="auto", help="label format name, or auto to detect it")
    p.add_argument("--metadata_csv", help="extra metadata CSV (ISIC 2019 metadata file)")
    p.add_argument("--skip-missing", "--skip_missing", dest="skip_missing", action="store_true",
                   help="drop rows whose image file is missing (one warning with the count) instead of failing")
    p.add_argument("--val_frac", type=float, default=0.15, help="validation fraction (default 0.15)")
    p.add_argument("--test_frac", type=float, default=0.15, help="test fraction (default 0.15)")
    p.add_argument("--seed", type=int, default=42, help="seed of the grouped shuffle (default 42)")
    p.add_argument("--output", required=True, help="split CSV to write")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the table, assign splits, write them and print the per-diagnosis summary.

    Returns:
        0 on success, 2 on bad input (the message is printed as ``error: ...``).
    """
    args = build_parser().parse_args(argv)
    # Checked here, before the table is read, and in the flags' own names.
    for flag, value in (("--val_frac", args.val_frac), ("--test_frac", args.test_frac)):
        if not 0.0 <= value < 1.0:
            print(f"error: {flag} must be a fraction in [0, 1), got {value}", file=sys.stderr)
            return ERROR_EXIT
    if args.val_frac + args.test_frac >= 1.0:
        print(f"error: --val_frac + --test_frac must leave images to train on (< 1), got "
              f"{args.val_frac} + {args.test_frac} = {args.val_frac + args.test_frac:g}", file=sys.stderr)
        return ERROR_EXIT
    from backend.data.formats import load_table
    from backend.data.splits import assign_splits, split_summary, write_splits

    try:
        table = load_table(args.csv, img_dir=args.img_dir, format=args.format, metadata_csv=args.metadata_csv,
                           skip_missing=args.skip_missing)
        splits = assign_splits(table, val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed)
        path = write_splits(table, splits, args.output)
    except REPORTED_ERRORS as e:
        print(error_line(e), file=sys.stderr)
        return ERROR_EXIT
    summary = split_summary(table, splits)
    print(summary.to_string())
    total = summary.loc["all", "total"]
    print("fractions: " + ", ".join(f"{s} {summary.loc['all', s] / total:.3f}" for s in ("train", "val", "test")))
    print(f"wrote {path} ({len(table)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
