r"""Evaluate a checkpoint on a labelled table: ``python -m scripts.evaluate --checkpoint CKPT --csv CSV``.

Writes metrics.csv, ISIC-format predictions, confusion matrix / ROC / thickness plots to
``--output_dir`` and prints the headline metrics. Examples::

    python -m scripts.evaluate --checkpoint runs/default/version_0/ckpts/best.ckpt \
        --csv ../shared/data/labels.csv --img_dir ../shared/data/images --split test
    python -m scripts.evaluate --checkpoint best.ckpt --csv external_test.csv --output_dir eval/external
"""

from __future__ import annotations

import argparse
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line

HEADLINE = (
    "balanced_accuracy", "accuracy", "f1_macro", "auroc_macro", "auroc_malignant", "sensitivity", "specificity",
    "thickness_mae_mm", "thickness_band_accuracy", "ece_before_calibration", "ece_after_calibration", "temperature",
)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a DermaLens training checkpoint (.ckpt)")
    p.add_argument("--csv", required=True, help="labelled table (generic CSV, ISIC 2019, HAM10000, isic-cli folder)")
    p.add_argument("--img_dir", help="folder of the images the table names")
    p.add_argument("--output_dir", default="eval", help="where the report files go (default: eval/)")
    p.add_argument("--split", help="evaluate only this split (test, val, train) of --splits_csv")
    p.add_argument("--splits_csv", help="split assignment; default: splits.csv of the checkpoint's run")
    p.add_argument("--calibrate_split", default="val",
                   help="fit temperature scaling on this split and report ECE before/after ('none' to skip)")
    p.add_argument("--threshold", type=float, default=0.5, help="malignant-probability threshold")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--no_metadata", action="store_true", help="evaluate fusion models without patient metadata")
    p.add_argument("--skip-missing", "--skip_missing", dest="skip_missing", action="store_true",
                   help="drop rows whose image file is missing (one warning with the count)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from backend.evaluation.evaluate import evaluate

    try:
        result = evaluate(
            args.checkpoint, args.csv, args.output_dir, img_dir=args.img_dir, split=args.split,
            splits_csv=args.splits_csv,
            calibrate_split=None if args.calibrate_split.lower() == "none" else args.calibrate_split,
            threshold=args.threshold, batch_size=args.batch_size, num_workers=args.num_workers,
            use_metadata=not args.no_metadata, skip_missing=args.skip_missing,
        )
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    for key in HEADLINE:
        if key in result.metrics:
            print(f"{key:>28}: {float(result.metrics[key]):.4f}")
    print(f"report files in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
