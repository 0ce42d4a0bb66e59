r"""Build a resized image cache: ``python -m scripts.preprocess --input IN --output OUT_DIR [flags]``.

Every image under ``--input`` (a folder, scanned recursively, or a CSV with an ``image`` column) is
decoded, optionally cleaned of hair (DullRazor), resized so its shorter side is ``--size`` (never
upscaled) and written to ``--output`` under the same relative path and name. Reruns skip files
already there; unreadable images are listed in ``OUT_DIR/preprocess_report.csv``; a cache built with
other settings is refused. Examples::

    python -m scripts.preprocess --input ../shared/data/images --output cache/256 --size 256
    python -m scripts.preprocess --input ../shared/data/labels.csv --img-dir ../shared/data/images \
        --output cache/256-hairless --hair-removal --workers 2

Exit codes: 0 when the run completed (failed images are listed, not fatal), 1 when every image
failed, 2 on bad arguments, settings or input table.
"""

from __future__ import annotations

import argparse
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags; defaults match :class:`backend.data.preprocess.PreprocessSettings`."""
    p = argparse.ArgumentParser(prog="python -m scripts.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="image folder, or CSV with an 'image' column")
    p.add_argument("--output", required=True, help="cache folder (created; reruns complete it)")
    p.add_argument("--size", type=int, default=256, help="shorter side of the written images in pixels (default 256)")
    p.add_argument("--hair-removal", action="store_true", help="remove hair (DullRazor) before resizing")
    p.add_argument("--hair-kernel-size", type=int, default=17, help="hair filter kernel at 512 px, odd (default 17)")
    p.add_argument("--hair-threshold", type=int, default=10, help="hair black-hat threshold, grey levels (default 10)")
    p.add_argument("--hair-inpaint-radius", type=int, default=3, help="inpainting radius in pixels (default 3)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, CPU count))")
    p.add_argument("--img-dir", help="base folder of the CSV's relative image paths (default: the CSV's folder)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from backend.data.preprocess import PreprocessSettings, preprocess_images

    try:
        settings = PreprocessSettings(
            size=args.size,
            hair_removal=args.hair_removal,
            hair_kernel_size=args.hair_kernel_size,
            hair_threshold=args.hair_threshold,
            hair_inpaint_radius=args.hair_inpaint_radius,
        )
        summary = preprocess_images(args.input, args.output, settings, img_dir=args.img_dir,
                                    workers=args.workers, progress=not args.no_progress)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    print(summary.describe())
    if summary.failed and not summary.processed and not summary.skipped:
        print(f"error: none of the {summary.failed} images could be read or written (see {summary.report})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
