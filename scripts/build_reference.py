"""Build a reference library of confirmed cases: ``python -m scripts.build_reference --csv labels.csv --output refs/a``.

The library stores, per readable image of the label file (any format ``load_table`` reads: a
generic CSV, ISIC 2019, HAM10000, an isic-cli download folder), the L2-normalised backbone
embedding of the model, its diagnosis, lesion and patient ids, SHA-256 hashes of the file and
of its pixels, and a small JPEG thumbnail, all inside ``--output`` (see
``backend/retrieval/library.py``). The dashboard's "Similar confirmed cases" panel and
``scripts.predict --reference`` search it with the same model; a library built with another model
is refused with the command that rebuilds it.

Unreadable images and missing files are reported and skipped (the manifest counts them). The
build writes chunks as it goes: an interrupted run keeps them and the same command continues
where it stopped; rerunning it on a finished library adds rows new to the label file. Examples::

    python -m scripts.build_reference --csv clinic/labels.csv --img_dir clinic/images --output refs/clinic_a
    python -m scripts.build_reference --csv labels.csv --output refs/clinic_a --checkpoint my_bundle --rebuild
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.cli import run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="python -m scripts.build_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="label file (or download folder) of the confirmed cases")
    p.add_argument("--img_dir", help="image folder (default: images/ beside the label file, else its folder)")
    p.add_argument("--output", required=True, help="library folder to create, finish or update")
    p.add_argument("--checkpoint", help="model bundle folder or .ckpt (default: the bundled default model)")
    p.add_argument("--format", default="auto", help="label format (default: detected)")
    p.add_argument("--metadata_csv", help="separate metadata file of formats that have one (ISIC 2019)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--chunk_size", type=int, default=256, help="images per resumable chunk (default 256)")
    p.add_argument("--thumb_size", type=int, default=128, help="longest thumbnail side in px (default 128)")
    p.add_argument("--rebuild", action="store_true",
                   help="discard the library in --output first (e.g. it was built with another model)")
    return p


def run(args: argparse.Namespace) -> int:
    """Build the library; returns the exit code."""
    from backend.data.formats import default_img_dir, load_table
    from backend.errors import ConfigError
    from backend.inference.predictor import Predictor
    from backend.model_store import DEFAULT_MODEL_DIR, describe_model_dir
    from backend.retrieval.build import build_library

    table = load_table(args.csv, img_dir=args.img_dir, format=args.format, metadata_csv=args.metadata_csv,
                       check_images=False)
    if args.checkpoint is None:
        status = describe_model_dir(DEFAULT_MODEL_DIR)
        if not status.available:
            raise ConfigError(f"no default model ({status.reason}); pass --checkpoint")
        args.checkpoint = str(DEFAULT_MODEL_DIR)
    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=args.batch_size)
    img_dir = args.img_dir or str(default_img_dir(args.csv))
    report = build_library(table, args.output, predictor, model_path=str(Path(args.checkpoint).resolve()),
                           img_dir=img_dir, chunk_size=args.chunk_size, thumb_size=args.thumb_size,
                           rebuild=args.rebuild)
    print(f"{report.path}: {report.n_rows} cases ({report.n_embedded} embedded now, {report.n_reused} kept from "
          f"before), {report.n_skipped} skipped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 even when some images were skipped)."""
    return run_reporting_errors(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
