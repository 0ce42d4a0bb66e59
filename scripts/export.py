r"""Export a training checkpoint as a model bundle: ``python -m scripts.export --checkpoint CKPT --output DIR``.

The bundle (``model.safetensors`` + ``model_card.json``, optionally ``model.onnx``) is what the app
and ``scripts/predict.py`` load. With ``--csv`` (the run's labelled table) the calibration
temperature is fitted on the run's validation split and the out-of-distribution statistics on
its training split (``splits.csv`` beside the checkpoint's run unless ``--splits_csv``). Examples::

    python -m scripts.export --checkpoint runs/cpu_small/version_0/ckpts/best.ckpt \
        --output assets/models/default --name "DermaLens tiny" \
        --csv ../shared/data/labels.csv --img_dir ../shared/data/images --onnx
    python -m scripts.export --checkpoint best.ckpt --output /tmp/bundle --temperature 1.3
    python -m scripts.export --checkpoint best.ckpt --output /tmp/bundle --csv ../shared/data/labels.csv \
        --test_img_sizes 192 224   # predict at the side that ranks validation best (BatchNorm adapted)
"""

from __future__ import annotations

import argparse
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a DermaLens training checkpoint (.ckpt)")
    p.add_argument("--output", required=True, help="bundle folder to write (created)")
    p.add_argument("--name", help="model name shown in the app (default: the checkpoint's file stem)")
    p.add_argument("--version", default="1", help="model version string (default: 1)")
    p.add_argument("--csv", help="the run's labelled table: fit temperature on val and OOD statistics on train")
    p.add_argument("--img_dir", help="folder of the images the table names")
    p.add_argument("--splits_csv", help="split assignment; default: splits.csv of the checkpoint's run")
    p.add_argument("--temperature", type=float, help="use this calibration temperature instead of fitting one")
    p.add_argument("--ood_percentile", type=float, default=99.0,
                   help="percentile of held-out training distances used as the OOD threshold (default 99)")
    p.add_argument("--max_ood_images", type=int, default=5000, help="train images used for OOD statistics")
    p.add_argument("--test_img_sizes", type=int, nargs="+", metavar="PX",
                   help="with --csv: also try predicting at these sides, BatchNorm adapted on training images, "
                        "and keep the one with the best validation malignant AUROC")
    p.add_argument("--adapt_images", type=int, default=1000,
                   help="training images that adapt BatchNorm to each --test_img_sizes side (default 1000)")
    p.add_argument("--calibration", choices=["temperature", "bias_corrected"], default="temperature",
                   help="with --csv: temperature scaling, or bias-corrected (temperature + per-class offsets, "
                        "for class-weighted models)")
    p.add_argument("--skip-missing", "--skip_missing", dest="skip_missing", action="store_true", default=None,
                   help="with --csv: leave out rows whose image file is missing (default: as the run did)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs the onnx package)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from backend.workflows.export import export_bundle

    try:
        result = export_bundle(
            args.checkpoint, args.output, name=args.name, version=args.version, csv=args.csv, img_dir=args.img_dir,
            splits_csv=args.splits_csv, temperature=args.temperature, ood_percentile=args.ood_percentile,
            max_ood_images=args.max_ood_images, onnx=args.onnx, batch_size=args.batch_size, progress=True,
            test_img_sizes=args.test_img_sizes, adapt_images=args.adapt_images, calibration_method=args.calibration,
            skip_missing=args.skip_missing,
        )
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    for message in result.skipped:
        print(f"skipped unreadable image: {message}", file=sys.stderr)
    card = result.card
    calib = card["calibration"]
    print(f"bundle: {result.bundle_dir}  ({card['name']} v{card['version']})")
    print(f"temperature: {calib['temperature']:.4f}  fitted on: {calib.get('fitted_on') or 'not fitted'}")
    if calib.get("ece_before") is not None:
        print(f"ECE before: {calib['ece_before']:.4f}  after: {calib['ece_after']:.4f}")
    if card.get("ood"):
        print(f"OOD threshold: {card['ood']['threshold']:.2f} ({card['ood']['n']} training images)")
    if result.onnx_path:
        print(f"onnx: {result.onnx_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
