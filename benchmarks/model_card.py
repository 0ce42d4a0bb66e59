"""Reproduce the bundled model card's test-split figures from the bundle and the data.

Rebuilds the test split from what the card records (label file, split fractions and seed; the
image-id fingerprint in the card proves it is the same split), predicts it with the bundle exactly
as the app does (same calibration, same TTA setting, same engine) and prints every card metric next
to the card's value, with the ratio reproduced/card, then the per-dataset figures and what each
traffic light means on the split (share of images and of malignant lesions, sensitivity and
specificity of "not green" and "red"), and the acquisition variants' figures and their paired
changes from the plain split. Exits 1 when a figure
differs from the card by more than ``--tolerance`` or the split is not the card's::

    python benchmarks/model_card.py                       # assets/models/default on ../shared/data
    python benchmarks/model_card.py --n-boot 1000 --json card_check.json

The point estimates must match to rounding; intervals are re-drawn with the same seed and also
match when ``--n-boot`` equals the card's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _gap(card: float, reproduced: float) -> float:
    """|reproduced - card|; infinite when either is missing or not a number (never "reproduced" by NaN)."""
    try:
        gap = abs(float(reproduced) - float(card))
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(gap) else gap


def build_parser() -> argparse.ArgumentParser:
    """The script's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="assets/models/default", help="bundle folder (default: the app's model)")
    p.add_argument("--csv", help="label file (default: the one the card names)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (the card uses 1000)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted |reproduced - card|")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                   help="also reproduce the acquisition variants (squashed, bordered) and their changes")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 reproduced, 1 differs, 2 bad input)."""
    args = build_parser().parse_args(argv)
    import pandas as pd

    from backend.data.dataset import encode_targets
    from backend.data.formats import load_table
    from backend.data.splits import assign_splits
    from backend.errors import DermaLensError
    from backend.evaluation.model_card import subgroup_metrics
    from backend.evaluation.split_eval import predict_rows, score_change, score_rows
    from backend.inference.predictor import Predictor
    from backend.workflows.pipeline import split_fingerprint

    try:
        predictor = Predictor.from_checkpoint(args.bundle)
        card = predictor.card
        split, expected = card.get("test_split") or {}, card.get("test_metrics") or {}
        if not expected:
            print(f"error: {args.bundle} has no test_metrics to reproduce", file=sys.stderr)
            return 2
        csv = args.csv or split["source"]
        table = load_table(csv)
        fractions = split["fractions"]
        splits = assign_splits(table, val_frac=fractions["val"], test_frac=fractions["test"], seed=split["seed"])
        t0 = time.perf_counter()
        pred = predict_rows(predictor, table[splits.reindex(table.index) == "test"], tta=predictor.tta)
        seconds = time.perf_counter() - t0
        metrics = score_rows(pred, n_boot=args.n_boot)
    except DermaLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # A card without the fingerprint cannot show the split is its own: not "reproduced".
    same_split = split.get("image_ids_sha256") == split_fingerprint(pred.rows["image_id"])
    print(f"bundle {args.bundle} ({card.get('name')} {card.get('version')}), data {csv}")
    print(f"test split: {len(pred.rows)} images (card: {split.get('rows')}), same images as the card: {same_split}; "
          f"TTA {predictor.tta}; {len(pred.rows) / seconds:.1f} images/s")
    print(f"{'metric':<34}{'card':>9}{'reproduced':>12}{'ratio':>8}   95% CI reproduced")
    worst = 0.0
    for name, entry in expected.items():
        got = metrics.get(name, {})
        a, b = entry.get("value"), got.get("value", math.nan)
        if a is None or (isinstance(a, float) and math.isnan(a)):
            continue
        worst = max(worst, _gap(a, b))
        ratio = b / a if a else math.nan
        lo, hi = got.get("lo", math.nan), got.get("hi", math.nan)
        print(f"{name:<34}{a:>9.4f}{b:>12.4f}{ratio:>8.3f}   ({lo:.3f}-{hi:.3f})")
    t = encode_targets(pred.rows)
    groups = subgroup_metrics(pred.rows, t["diagnosis"], pred.raw.probs, t["label"], class_offsets=pred.class_offsets)
    by_dataset = groups[groups["attribute"] == "dataset"]
    print("\nper dataset (test split):")
    print(by_dataset[["group", "n", "n_malignant", "balanced_accuracy", "auroc_malignant"]].to_string(index=False))
    ops_card = (card.get("operating_points") or {}).get("test")
    if ops_card:
        from backend.evaluation.operating_points import light_summary
        from backend.inference.risk import risk_index

        ops = light_summary(risk_index(pred.raw.probs, predictor.risk), t["label"], predictor.risk)
        print("\nwhat each light means (test split): card / reproduced")
        for light, row in ops["lights"].items():
            was = ops_card["lights"][light]
            worst = max(worst, _gap(was["share_of_images"], row["share_of_images"]))
            print(f"{light:<8} share of images {was['share_of_images']:.4f} / {row['share_of_images']:.4f}, "
                  f"share malignant {was['share_malignant'] or 0:.4f} / {row['share_malignant'] or 0:.4f}")
        for call in ("not_green", "red"):
            for rate in ("sensitivity", "specificity"):
                worst = max(worst, _gap(ops_card[call][rate], ops[call][rate]))
                print(f"{call} {rate}: {ops_card[call][rate]:.4f} / {ops[call][rate]:.4f}")
    variants = card.get("test_variants") or {}
    reproduced_variants: dict[str, object] = {}
    for variant in [v for v in (variants.get("metrics") or {}) if v != "plain"] if args.variants else []:
        perturbed = predict_rows(predictor, table[splits.reindex(table.index) == "test"], tta=predictor.tta,
                                 variant=variant)
        figures = score_rows(perturbed, n_boot=args.n_boot, only=tuple(variants["metrics"][variant]))
        change = score_change(pred, perturbed, n_boot=args.n_boot, only=tuple(variants["metrics"][variant]))
        reproduced_variants[variant] = {"metrics": figures, "change": change}
        print(f"\n{variant}: card / reproduced (change from plain, paired 95% interval)")
        for name, entry in variants["metrics"][variant].items():
            if entry.get("value") is None:  # undefined on this split when the card was written
                continue
            worst = max(worst, _gap(entry["value"], figures[name]["value"]))
            was = ((variants.get("changes") or {}).get(variant) or {}).get(name) or {}
            if was.get("value") is not None:
                worst = max(worst, _gap(was["value"], change[name]["value"]))
            got = change[name]
            print(f"{name:<34}{entry['value']:>9.4f}{figures[name]['value']:>12.4f}   "
                  f"{got['value']:+.4f} ({got['lo']:+.3f} to {got['hi']:+.3f})")
    ok = same_split and worst <= args.tolerance
    verdict = "REPRODUCED" if ok else "DIFFERS"
    print(f"\nlargest |reproduced - card| = {worst:.2e} (tolerance {args.tolerance:g}): {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bundle": args.bundle, "same_split": same_split, "max_abs_diff": worst,
            "images_per_s": len(pred.rows) / seconds,
            "metrics": metrics, "per_dataset": pd.DataFrame(by_dataset).to_dict(orient="records"),
            "variants": reproduced_variants,
        }, indent=2, default=float), encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
