"""Lesion follow-up accuracy on real images with synthetic second visits of known motion and growth.

For each of the first ``--n`` images (sorted names of ``labels.csv``; default 60), at ``--side`` px
(default 256, longer side), a follow-up photo is made with :mod:`backend.followup.synthetic`: a
rotation of up to 30 degrees, a shift of up to 8% of the side, a zoom of 0.8-1.25, a brightness
factor of 0.8-1.2 and white-balance gains of 0.9-1.1 per channel, sensor noise, and lesion growth
of 1.0-1.5 in linear size (every third pair: no growth). Then :func:`compare_visits` is run on the
pair and compared with the truth:

* **registration error**: mean distance, in pixels at ``--side``, between a 5 x 5 grid over the
  baseline lesion's bounding box (corners included) and the same points mapped to the follow-up
  by the true transform and back by the estimated one (a pair that is not aligned counts as
  infinitely wrong);
* **area change**: share of pairs whose measured relative area change is within +-0.10 of the truth,
  and share of the no-growth pairs with ``|area_change| <= 0.05``.

The same run measures three baselines: ours without the ECC refinement (``no ECC``), a naive
registration (SIFT + RANSAC over all matches, the lesion's included, without ECC: growth then
pulls the fit) and the identity transform (no registration), with the ratio of their median
error to ours::

    python benchmarks/followup_accuracy.py [--data ../shared/data] [--n 60] [--side 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"median_registration_error_px": 2.0, "area_within_0.10": 0.90, "no_growth_within_0.05": 1.0}
AREA_TOLERANCE = 0.10
NO_GROWTH_TOLERANCE = 0.05


@dataclass
class PairOutcome:
    """One pair's truth and what a method measured."""

    image: str
    growth: float
    true_area_change: float
    error_px: float
    area_change: float | None
    aligned: bool
    note: str = ""


def choose_images(data: Path, n: int) -> list[Path]:
    """The first ``n`` image files of ``labels.csv`` by sorted name (those present in ``images/``).

    Args:
        data: Folder with ``labels.csv`` and ``images/``.
        n: How many images.
    """
    import csv

    with open(data / "labels.csv", newline="", encoding="utf-8") as fh:
        names = sorted({row["image"] for row in csv.DictReader(fh) if row.get("image")})
    paths = [data / "images" / name for name in names]
    return [p for p in paths if p.is_file()][:n]


def lesion_grid(mask):
    """5 x 5 points ``(x, y)`` spanning the bounding box of ``mask`` (corners included).

    Args:
        mask: HxW bool lesion.
    """
    import numpy as np

    ys, xs = np.nonzero(mask)
    gx, gy = np.meshgrid(np.linspace(xs.min(), xs.max(), 5), np.linspace(ys.min(), ys.max(), 5))
    return np.stack([gx, gy], axis=-1).reshape(-1, 2)


def registration_error(estimated, truth, grid) -> float:
    """Mean distance between ``grid`` and its image by ``truth`` (baseline -> follow-up) then ``estimated``.

    Args:
        estimated: Estimated 2x3 follow-up -> baseline map, or None (not aligned).
        truth: True 2x3 baseline -> follow-up map.
        grid: ``(N, 2)`` baseline points.
    """
    import numpy as np

    from backend.followup.registration import apply

    if estimated is None:
        return math.inf
    return float(np.linalg.norm(apply(estimated, apply(truth, grid)) - grid, axis=1).mean())


def run_method(baseline, synthetic, config, name: str) -> PairOutcome:
    """Compare one pair with ``config`` and score it against the truth.

    Args:
        baseline: Baseline image.
        synthetic: Its synthetic follow-up and truth.
        config: Registration settings of the method.
        name: Image name.
    """
    from backend.errors import FollowUpError
    from backend.followup.change import compare_visits

    grid = lesion_grid(synthetic.before_mask)
    try:
        result = compare_visits(baseline, synthetic.image, config=config)
    except FollowUpError as err:
        return PairOutcome(name, synthetic.params.growth, synthetic.true_area_change, math.inf, None, False, str(err))
    matrix = result.registration.matrix if result.aligned else None
    return PairOutcome(name, synthetic.params.growth, synthetic.true_area_change,
                       registration_error(matrix, synthetic.matrix, grid), result.area_change, result.aligned,
                       "" if result.aligned else str(result.reason))


def summarise(outcomes: list[PairOutcome]) -> dict[str, float]:
    """Median registration error, area accuracy and no-growth stability of one method.

    Args:
        outcomes: One method's pair outcomes.
    """
    errors = [o.error_px for o in outcomes]
    within = [o.area_change is not None and abs(o.area_change - o.true_area_change) <= AREA_TOLERANCE
              for o in outcomes]
    still = [o for o in outcomes if o.growth == 1.0]
    stable = [o.area_change is not None and abs(o.area_change) <= NO_GROWTH_TOLERANCE for o in still]
    return {
        "pairs": len(outcomes), "aligned": sum(o.aligned for o in outcomes),
        "median_registration_error_px": statistics.median(errors) if errors else math.nan,
        "p90_registration_error_px": sorted(errors)[int(0.9 * (len(errors) - 1))] if errors else math.nan,
        "area_within_0.10": sum(within) / len(within) if within else math.nan,
        "no_growth_pairs": len(still),
        "no_growth_within_0.05": sum(stable) / len(stable) if stable else math.nan,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures beside the targets; returns the exit code.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder with labels.csv + images/")
    parser.add_argument("--n", type=int, default=60, help="number of images (default 60)")
    parser.add_argument("--side", type=int, default=256, help="longer side of the pairs, pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic follow-ups")
    parser.add_argument("--json", help="also write the figures and per-pair outcomes here")
    parser.add_argument("--verbose", action="store_true", help="print every pair")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "labels.csv").is_file() or not (data / "images").is_dir():
        print(f"real data not found at {data} (labels.csv + images/); pass --data", file=sys.stderr)
        return 2

    import numpy as np

    from backend.data.images import load_image
    from backend.errors import FollowUpError
    from backend.followup.registration import RegistrationConfig, work_copy
    from backend.followup.segmentation import segment_lesion
    from backend.followup.synthetic import make_follow_up, random_params

    methods = {"ours": RegistrationConfig(), "no ECC": RegistrationConfig(refine=False),
               "naive": RegistrationConfig(exclude_lesion=False, refine=False)}
    paths = choose_images(data, args.n)
    outcomes: dict[str, list[PairOutcome]] = {name: [] for name in (*methods, "identity")}
    skipped: list[str] = []
    start = time.perf_counter()
    for i, path in enumerate(paths):
        baseline, _ = work_copy(load_image(path), args.side)
        try:
            mask = segment_lesion(baseline, path.name).mask
        except FollowUpError as err:
            skipped.append(str(err))
            continue
        rng = np.random.default_rng([args.seed, i])
        params = random_params(rng, growth=1.0 if i % 3 == 0 else None)
        synthetic = make_follow_up(baseline, params, mask, seed=args.seed * 100_003 + i)
        if not math.isfinite(synthetic.true_area_change):
            skipped.append(f"{path.name}: the synthetic follow-up does not show the baseline lesion at all (no truth)")
            continue
        for name, config in methods.items():
            outcomes[name].append(run_method(baseline, synthetic, config, path.name))
        grid = lesion_grid(mask)
        identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        outcomes["identity"].append(PairOutcome(path.name, params.growth, synthetic.true_area_change,
                                                registration_error(identity, synthetic.matrix, grid), None, True))
        if args.verbose:
            o, b = outcomes["ours"][-1], outcomes["naive"][-1]
            measured = "n/a" if o.area_change is None else f"{o.area_change:+.3f}"
            print(f"{path.name:32s} growth {params.growth:.2f} zoom {params.zoom:.2f} angle {params.angle_deg:+5.1f} "
                  f"true {o.true_area_change:+.3f} ours {measured} err {o.error_px:6.2f} px "
                  f"(naive {b.error_px:6.2f}) {o.note}")
    elapsed = time.perf_counter() - start
    figures = {name: summarise(items) for name, items in outcomes.items()}
    print(f"Follow-up accuracy on {len(outcomes['ours'])} real images from {data} at {args.side} px "
          f"({len(skipped)} skipped), {elapsed:.0f} s")
    for message in skipped:
        print(f"  skipped: {message}")
    header = f"{'method':10s} {'aligned':>8s} {'median err px':>14s} {'p90 err px':>11s} {'area +-0.10':>12s} " \
             f"{'no-growth +-0.05':>17s}"
    print(header)
    for name, fig in figures.items():
        area = "n/a" if name == "identity" else f"{fig['area_within_0.10']:.0%}"
        still = "n/a" if name == "identity" else f"{fig['no_growth_within_0.05']:.0%} of {fig['no_growth_pairs']}"
        print(f"{name:10s} {fig['aligned']:>4d}/{fig['pairs']:<3d} {fig['median_registration_error_px']:14.2f} "
              f"{fig['p90_registration_error_px']:11.2f} {area:>12s} {still:>17s}")
    print(f"target     {'':8s} {'<= ' + format(TARGETS['median_registration_error_px'], '.1f'):>14s} {'':11s} "
          f"{'>= 90%':>12s} {'all (100%)':>17s}")
    mine = figures["ours"]["median_registration_error_px"]
    for name in ("no ECC", "naive", "identity"):
        theirs = figures[name]["median_registration_error_px"]
        ratio = theirs / mine if mine > 0 else math.inf
        print(f"median registration error, {name} / ours: {ratio:.1f}x")
    failures = [o for o in outcomes["ours"]
                if o.area_change is None or abs(o.area_change - o.true_area_change) > AREA_TOLERANCE]
    for o in failures:
        measured = "n/a" if o.area_change is None else f"{o.area_change:+.3f}"
        print(f"  area miss: {o.image} true {o.true_area_change:+.3f} measured {measured} err {o.error_px:.2f} px "
              f"{o.note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "targets": TARGETS, "skipped": skipped,
                                               "pairs": {k: [vars(o) for o in v] for k, v in outcomes.items()}},
                                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
