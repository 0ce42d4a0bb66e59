r"""Import an isic-cli download: ``python -m scripts.import_isic DIR --output labels.csv [flags]``.

``DIR`` is what ``isic image download ... DIR`` wrote (``ISIC_xxxxxxx.jpg``, ``metadata.csv``,
``attribution.txt``). The output is the generic label CSV that ``scripts/train.py --csv`` and
``backend.data.formats.load_table`` read (image paths relative to the CSV's folder where the images
are inside it). Diagnoses are mapped to MEL, NV, BCC, AK, BKL, DF, VASC, SCC or UNK, ``mel_thick_mm``
to the exact Breslow thickness (melanoma in situ = 0.0); licence and attribution are kept per image.
Training can also read ``DIR`` directly (``--csv DIR``); this import is for inspecting or editing
the labels. See docs/getting_data.md. Example::

    isic image download --search 'mel_thick_mm:* AND image_type:dermoscopic' data/isic_thickness
    python -m scripts.import_isic data/isic_thickness --output data/isic_thickness/labels.csv

Exit codes: 0 written, 2 bad input (the message names the file, line and field).
"""

from __future__ import annotations

import argparse
import sys

from scripts.cli import ERROR_EXIT, REPORTED_ERRORS, error_line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    p = argparse.ArgumentParser(prog="python -m scripts.import_isic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="isic-cli download folder (or its metadata.csv)")
    p.add_argument("--output", required=True, help="generic label CSV to write, e.g. labels.csv")
    p.add_argument("--keep-non-dermoscopic", action="store_true",
                   help="keep clinical/overview/TBP images (image_type other than dermoscopic); default: skip them")
    p.add_argument("--strict", action="store_true",
                   help="stop on a diagnosis value the mapping table does not know (default: warn and count)")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop rows whose image file is missing, with a count (default: stop with an error)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from backend.data.formats.isic_import import describe, import_isic_archive

    try:
        table = import_isic_archive(args.folder, args.output, keep_non_dermoscopic=args.keep_non_dermoscopic,
                                    strict=args.strict, skip_missing=args.skip_missing)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
    print(f"wrote {args.output}")
    print(describe(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
