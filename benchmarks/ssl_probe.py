r"""Does BYOL pretraining help? Frozen-feature probes and short fine-tunes, BYOL backbone vs random init.

Given a BYOL backbone export (``backbone.safetensors``) and the same architecture randomly
initialised, on a lesion- and patient-grouped split of the labelled table (the split
``scripts/train.py`` uses by default: ``assign_splits`` with val 0.15, test 0.15, seed 42):

1. frozen pooled features at the export's image size and eval preprocessing, for the train and
   val rows with a known diagnosis (8 classes; UNK rows left out);
2. a linear probe: standardised features, logistic regression with ``class_weight="balanced"``,
   its ``C`` picked from 1e-3..10 by 3-fold cross-validation on the train features only;
3. a kNN probe: cosine similarity on L2-normalised features, the ``k`` nearest train images vote
   with weight ``exp(sim / 0.07)`` divided by their class's train frequency (so NV's majority
   does not outvote every rare class);
4. a short supervised fine-tune of each (``backend.training.run.fit``, image-only, few epochs on
   a few batches per epoch, identical config and seeds apart from ``model.pretrained_path``),
   repeated for each ``--finetune-seeds`` value (mean and standard deviation reported).

Balanced accuracy on the val split is reported for every row, with the BYOL / random ratio. The
test split is never read. ``--write-exclude`` writes the val+test image names, so pretraining
can leave them out (``--exclude-list``)::

    python benchmarks/ssl_probe.py --write-exclude runs/ssl/exclude_val_test.txt
    python benchmarks/ssl_probe.py --export runs/ssl/byol_tiny64/version_0/backbone.safetensors \
        --out runs/ssl/probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CSV = "../shared/data/labels.csv"
DEFAULT_IMG_DIR = "../shared/data/images"


def load_split(csv: str, img_dir: str, seed: int = 42) -> tuple[Any, Any]:
    """The lesion table and its train/val/test assignment (as ``scripts/train.py`` computes it by default)."""
    from backend.data.formats import load_table
    from backend.data.splits import assign_splits

    table = load_table(csv, img_dir=img_dir)
    return table, assign_splits(table, val_frac=0.15, test_frac=0.15, seed=seed)


def write_exclude(csv: str, img_dir: str, out: str, seed: int = 42) -> int:
    """Write the file names of the val and test rows, one per line; returns how many."""
    table, splits = load_split(csv, img_dir, seed)
    names = sorted(Path(p).name for p in table.loc[splits != "train", "image"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(names) + "\n", encoding="utf-8")
    return len(names)


def extract_features(backbones: dict[str, Any], table: Any, pre: dict[str, Any], batch_size: int,
                     num_workers: int) -> tuple[dict[str, Any], Any]:
    """Pooled eval-mode features of every backbone for ``table`` (images decoded once for all)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from backend.data.dataset import LesionDataset
    from backend.data.transforms import build_eval_transform

    dataset = LesionDataset(table, build_eval_transform(pre), int(pre["img_size"]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats: dict[str, list] = {name: [] for name in backbones}
    labels = []
    with torch.inference_mode():
        for batch in loader:
            for name, backbone in backbones.items():
                feats[name].append(backbone(batch["image"]).float().numpy())
            labels.append(batch["diagnosis"].numpy())
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)


def linear_probe(x_train: Any, y_train: Any, x_val: Any, y_val: Any, seed: int) -> tuple[float, float]:
    """Balanced val accuracy of a class-balanced logistic regression, and the ``C`` CV picked on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    grid = {"logisticregression__C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]}
    search = GridSearchCV(pipe, grid, scoring="balanced_accuracy",
                          cv=StratifiedKFold(3, shuffle=True, random_state=seed), n_jobs=1)
    search.fit(x_train, y_train)
    return float(balanced_accuracy_score(y_val, search.predict(x_val))), float(search.best_params_[
        "logisticregression__C"])


def knn_probe(x_train: Any, y_train: Any, x_val: Any, y_val: Any, k: int = 20, temperature: float = 0.07) -> float:
    """Balanced val accuracy of a class-balanced, similarity-weighted cosine kNN."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score

    def unit(x: Any) -> Any:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    classes, y_idx = np.unique(y_train, return_inverse=True)
    inv_freq = 1.0 / np.bincount(y_idx, minlength=len(classes))
    sims = unit(x_val) @ unit(x_train).T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    votes = np.zeros((len(x_val), len(classes)))
    weights = np.exp(top_sims / temperature) * inv_freq[y_idx[top]]
    np.add.at(votes, (np.arange(len(x_val))[:, None], y_idx[top]), weights)
    return float(balanced_accuracy_score(y_val, classes[votes.argmax(axis=1)]))


def finetune(name: str, meta: dict[str, Any], export: str | None, args: argparse.Namespace,
             seed: int) -> dict[str, Any]:
    """A short image-only fine-tune with ``backend.training.run.fit``; val metrics of the last epoch."""
    from backend.config import from_dict
    from backend.training.config import ExperimentConfig
    from backend.training.run import fit

    size = int(meta["img_size"])
    cfg = from_dict(ExperimentConfig, {
        "data": {"csv": args.csv, "img_dir": args.img_dir, "img_size": size, "batch_size": args.batch_size_ft,
                 "num_workers": args.num_workers, "balanced_sampler": True, "use_metadata": False,
                 "color_constancy": bool(meta["preprocessing"]["color_constancy"]),
                 "split": {"seed": args.split_seed}},
        "model": {"backbone": meta["backbone"], "backbone_kwargs": meta["backbone_kwargs"],
                  "pretrained_path": export, "fusion_dim": 128},
        "optim": {"lr": args.ft_lr, "warmup_epochs": 0.5, "freeze_epochs": 0, "layer_decay": 1.0},
        "trainer": {"max_epochs": args.finetune_epochs, "accelerator": "cpu", "devices": "1", "early_stop": 0,
                    "limit_train_batches": args.finetune_batches, "log_every_n_steps": 10},
        "log_dir": str(Path(args.work_dir) / "finetune"), "experiment_name": f"{name}_seed{seed}", "seed": seed,
    })
    start = time.perf_counter()
    result = fit(cfg, test=False)  # the test split stays untouched
    keys = ("val/balanced_accuracy", "val/auroc_malignant")
    out = {k: float(result.metrics.get(k, float("nan"))) for k in keys}
    out["seconds"] = time.perf_counter() - start
    out["run_dir"] = str(result.run_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the probes and fine-tunes, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", help="BYOL backbone.safetensors")
    p.add_argument("--csv", default=DEFAULT_CSV)
    p.add_argument("--img-dir", default=DEFAULT_IMG_DIR)
    p.add_argument("--write-exclude", metavar="PATH", help="only write the val+test image names to PATH")
    p.add_argument("--max-train", type=int, default=0, help="probe on a seeded subset of train rows (0 = all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=3, help="0 skips the fine-tunes")
    p.add_argument("--finetune-batches", type=int, default=40, help="train batches per fine-tune epoch")
    p.add_argument("--batch-size-ft", type=int, default=64)
    p.add_argument("--ft-lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42, help="random init and probe CV folds")
    p.add_argument("--split-seed", type=int, default=42, help="seed of the train/val/test split (as data.split.seed)")
    p.add_argument("--finetune-seeds", type=int, nargs="+", default=[42], help="one fine-tune pair per seed")
    p.add_argument("--work-dir", default="runs/ssl", help="fine-tune run folders go under <work-dir>/finetune")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.write_exclude:
        print(f"wrote {write_exclude(args.csv, args.img_dir, args.write_exclude, args.split_seed)} names to "
              f"{args.write_exclude}")
        return 0
    if not args.export:
        p.error("--export is required (or --write-exclude)")

    import numpy as np
    import torch

    from backend.data.schema import DIAGNOSES
    from backend.training.byol_run import backbone_from_export

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    byol, meta = backbone_from_export(args.export)
    torch.manual_seed(args.seed)
    rand, _ = backbone_from_export(args.export, random_init=True)
    backbones = {"random": rand.eval(), "byol": byol.eval()}

    table, splits = load_split(args.csv, args.img_dir, args.split_seed)
    known = table["diagnosis"].isin(DIAGNOSES).to_numpy()
    train = table[(splits == "train").to_numpy() & known]
    if args.max_train and args.max_train < len(train):
        train = train.sample(n=args.max_train, random_state=args.seed)
    val = table[(splits == "val").to_numpy() & known]
    t0 = time.perf_counter()
    f_train, y_train = extract_features(backbones, train, meta["preprocessing"], args.batch_size, args.num_workers)
    f_val, y_val = extract_features(backbones, val, meta["preprocessing"], args.batch_size, args.num_workers)
    t_features = time.perf_counter() - t0

    results: dict[str, Any] = {"export": args.export, "backbone": meta["backbone"], "img_size": meta["img_size"],
                               "byol_steps": meta.get("global_step"), "n_train": len(train), "n_val": len(val),
                               "feature_seconds": t_features, "machine": platform.processor() or platform.machine()}
    for name in backbones:
        t0 = time.perf_counter()
        acc, c = linear_probe(f_train[name], y_train, f_val[name], y_val, args.seed)
        results[f"{name}/linear_probe"] = acc
        results[f"{name}/linear_probe_C"] = c
        results[f"{name}/knn"] = knn_probe(f_train[name], y_train, f_val[name], y_val, k=args.knn_k)
        results[f"{name}/probe_seconds"] = time.perf_counter() - t0
    if args.finetune_epochs > 0:
        for name, export in (("random", None), ("byol", args.export)):
            runs = [finetune(f"ft_{name}", meta, export, args, seed) for seed in args.finetune_seeds]
            for short in ("balanced_accuracy", "auroc_malignant"):
                values = [r[f"val/{short}"] for r in runs]
                results[f"{name}/finetune_{short}"] = float(np.mean(values))
                results[f"{name}/finetune_{short}_std"] = float(np.std(values))
                results[f"{name}/finetune_{short}_per_seed"] = values
            results[f"{name}/finetune_seconds"] = [r["seconds"] for r in runs]
            results[f"{name}/finetune_runs"] = [r["run_dir"] for r in runs]
    results["total_seconds"] = time.perf_counter() - t_start

    rows = [("linear probe bal. acc.", "linear_probe"), ("kNN bal. acc.", "knn")]
    if args.finetune_epochs > 0:
        rows += [("fine-tune bal. acc.", "finetune_balanced_accuracy"),
                 ("fine-tune AUROC malignant", "finetune_auroc_malignant")]
    print(f"\n{meta['backbone']} at {meta['img_size']} px; {len(train)} train / {len(val)} val images "
          f"(8 classes, val split of labels.csv)")
    print(f"| {'metric':<26} | {'random init':>11} | {'BYOL':>7} | {'BYOL / random':>13} |")
    print(f"|{'-' * 28}|{'-' * 13}|{'-' * 9}|{'-' * 15}|")
    for label, key in rows:
        r, b = results[f"random/{key}"], results[f"byol/{key}"]
        ratio = b / r if r else float("nan")
        print(f"| {label:<26} | {r:>11.4f} | {b:>7.4f} | {ratio:>13.3f} |")
    if args.finetune_epochs > 0 and len(args.finetune_seeds) > 1:
        std = {k: results[f"{k}/finetune_balanced_accuracy_std"] for k in ("random", "byol")}
        print(f"fine-tune: mean of seeds {args.finetune_seeds}; std of bal. acc.: random {std['random']:.4f}, "
              f"BYOL {std['byol']:.4f}")
    print(f"chance level (8 balanced classes): {1 / len(np.unique(y_val)):.4f}; "
          f"total {results['total_seconds']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
