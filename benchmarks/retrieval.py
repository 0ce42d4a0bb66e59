"""Similar confirmed cases: does the neighbours' vote separate malignant lesions, and how fast is a query?

With the bundled model, the training split of ``../shared/data`` becomes a reference library
(``backend.retrieval.build_library``, cached under ``runs/retrieval/`` and resumed there, so a
rerun does not embed again) and every test-split image is a query, exactly as
``scripts.predict --reference`` runs it: its own file, pixels, lesion and patient are left out,
the ``k = 10`` nearest cases vote. Reported, each with a 95% percentile-bootstrap interval
(patients resampled, ``backend.metrics.bootstrap``):

* malignant AUROC of the vote (``knn_malignant``, share of malignant neighbours), of the
  classifier (``Prediction.malignant``) and of their average;
* accuracy of the neighbours' majority diagnosis and of the classifier's top class.

Latency of one query's search (k = 10, batch 1, the embedding not included) at 1,000 and 10,000
references (real library embeddings, test-split queries) and 100,000 (synthetic random unit
vectors of the model's feature dimension): exact numpy search against a faiss HNSW graph, in
alternation so both see the same machine load, with p50/p95, their ratio, the graph's build time
and its recall@10 against the exact result. One end-to-end query (decode, forward pass, search,
vote) is timed too. The targets assume an idle 2-core machine; the load average is printed::

    python benchmarks/retrieval.py
    python benchmarks/retrieval.py --checkpoint assets/models/default --json runs/retrieval/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TARGET_P95_MS = 20.0
SPLIT_FILE = REPO / "runs" / "default_v1" / "version_0" / "splits.csv"


def percentiles(times_s: list[float]) -> tuple[float, float]:
    import numpy as np

    ms = np.asarray(times_s) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def load_data(data: Path):
    """The lesion table and its split (the training run's split file, else the same seeded split)."""
    from backend.data.formats import load_table
    from backend.data.splits import assign_splits, read_splits

    table = load_table(data / "labels.csv", check_images=False)
    if SPLIT_FILE.is_file():
        splits, source = read_splits(SPLIT_FILE, table), str(SPLIT_FILE.relative_to(REPO))
    else:
        splits, source = assign_splits(table, val_frac=0.15, test_frac=0.15, seed=42), "assign_splits(seed=42)"
    return table, splits, source


def query_outputs(predictor, test, cache: Path) -> dict:
    """Per test image: predictions (``Prediction.malignant``, top class), backbone features and hashes (cached)."""
    import hashlib

    import numpy as np
    from tqdm.auto import tqdm

    from backend.errors import ConfigError, ImageLoadError
    from backend.retrieval.build import pixels_sha256

    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    out = {"image_id": [], "features": [], "malignant": [], "top_class": [], "sha256": [], "pixels": []}
    rows = test.to_dict("records")
    for start in tqdm(range(0, len(rows), 64), desc="test queries", unit="batch", file=sys.stderr):
        decoded, metas, kept = [], [], []
        for row in rows[start : start + 64]:
            try:
                data = Path(row["image"]).read_bytes()
                name, image = predictor.load((row["image"], data))
            except (OSError, ImageLoadError, ConfigError):
                continue
            decoded.append((name, image))
            metas.append({k: row[k] for k in ("age_approx", "sex", "anatom_site_general")})
            kept.append((row["image_id"], hashlib.sha256(data).hexdigest(), pixels_sha256(image)))
        if not decoded:
            continue
        preds = predictor.predict_decoded(decoded, metas)  # what scripts.predict writes
        raw, _, _ = predictor.raw_outputs([img for _, img in decoded])  # what --reference searches with
        out["features"].append(raw.features.astype(np.float32))
        out["malignant"] += [p.malignant for p in preds]
        out["top_class"] += [p.top_class for p in preds]
        for image_id, sha, pix in kept:
            out["image_id"].append(image_id)
            out["sha256"].append(sha)
            out["pixels"].append(pix)
    result = {k: (np.concatenate(v) if k == "features" else np.asarray(v)) for k, v in out.items()}
    import io

    from backend.files import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **result)
    atomic_write_bytes(cache, buffer.getvalue())
    return result


def accuracy_figures(library, test, outputs: dict, k: int) -> dict:
    """AUROCs of the vote, the classifier and their average, and diagnosis accuracies, with 95% intervals."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from backend.data.schema import DIAGNOSES
    from backend.metrics.bootstrap import bootstrap_ci
    from backend.retrieval.query import excluded_rows, search

    by_id = test.set_index("image_id")
    rows = by_id.loc[outputs["image_id"]]
    exclude = [excluded_rows(library, lesion, patient, sha, pix) for lesion, patient, sha, pix in zip(
        rows["lesion_id"].astype("string").fillna("").tolist(), rows["patient_id"].astype("string").fillna("").tolist(),
        outputs["sha256"].tolist(), outputs["pixels"].tolist(), strict=True)]
    results = search(library, outputs["features"], k, exclude, thumbnails=False)
    knn = np.array([r.vote.share_malignant for r in results])
    knn_dx = np.array([r.vote.majority_diagnosis for r in results])
    clf = outputs["malignant"].astype(float)
    y = rows["label"].to_numpy(int)
    groups = np.array([pid if isinstance(pid, str) and pid else (lid if isinstance(lid, str) and lid else None)
                       for pid, lid in zip(rows["patient_id"].tolist(), rows["lesion_id"].tolist(), strict=True)],
                      dtype=object)

    def auc(labels, scores):
        return roc_auc_score(labels, scores)

    figures: dict = {"n_queries": len(y), "n_malignant": int(y.sum()), "k": k,
                     "queries_with_exclusions": int(sum(len(e) > 0 for e in exclude)),
                     "rows_excluded": int(sum(len(e) for e in exclude))}
    for name, score in (("knn_vote", knn), ("classifier", clf), ("average", (knn + clf) / 2)):
        ci = bootstrap_ci(auc, y, score, n_boot=1000, groups=groups)
        figures[f"auroc_{name}"] = [ci.point, ci.lo, ci.hi]
    dx = rows["diagnosis"].astype("string").fillna("").to_numpy(str)
    # Scored on the 8 diagnoses the model can call, as the card's balanced accuracy; an UNK image
    # (no confirmed diagnosis) is left out, or it would count as a ninth class nobody can predict.
    known = np.isin(dx, DIAGNOSES)
    figures["n_diagnosed"] = int(known.sum())
    for name, pred in (("knn_majority", knn_dx), ("classifier", outputs["top_class"])):
        ci = bootstrap_ci(lambda a, b: float(np.mean(a == b)), dx[known], np.asarray(pred)[known], n_boot=1000,
                          groups=groups[known])
        figures[f"diagnosis_accuracy_{name}"] = [ci.point, ci.lo, ci.hi]
        ci = bootstrap_ci(balanced_accuracy_score, dx[known], np.asarray(pred)[known], n_boot=1000,
                          groups=groups[known])
        figures[f"diagnosis_balanced_accuracy_{name}"] = [ci.point, ci.lo, ci.hi]
    for kk in (5, 20):  # the vote's sensitivity to k (no interval)
        res = search(library, outputs["features"], kk, exclude, thumbnails=False)
        figures[f"auroc_knn_vote_k{kk}"] = float(roc_auc_score(y, [r.vote.share_malignant for r in res]))
    return figures


def latency(embeddings, queries, n_queries: int, k: int = 10) -> dict:
    """p50/p95 of one query's search, exact numpy vs faiss HNSW (alternating), HNSW build time and recall."""
    import numpy as np

    from backend.retrieval.index import ExactIndex, HNSWIndex, faiss_available

    exact = ExactIndex(embeddings)
    out: dict = {"n_references": len(embeddings)}
    hnsw = None
    if faiss_available():
        t0 = time.perf_counter()
        hnsw = HNSWIndex(embeddings)
        out["hnsw_build_s"] = time.perf_counter() - t0
    times_exact, times_hnsw, recall = [], [], []
    for q in queries[:n_queries]:
        t0 = time.perf_counter()
        _, want = exact.search(q[None], k)
        times_exact.append(time.perf_counter() - t0)
        if hnsw is not None:
            t0 = time.perf_counter()
            _, got = hnsw.search(q[None], k)
            times_hnsw.append(time.perf_counter() - t0)
            recall.append(len(set(got[0].tolist()) & set(want[0].tolist())) / k)
    out["exact_p50_ms"], out["exact_p95_ms"] = percentiles(times_exact)
    if hnsw is not None:
        out["hnsw_p50_ms"], out["hnsw_p95_ms"] = percentiles(times_hnsw)
        out["p95_ratio_exact_over_hnsw"] = out["exact_p95_ms"] / out["hnsw_p95_ms"]
        out["hnsw_recall_at_10"] = float(np.mean(recall))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "assets" / "models" / "default"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--cache", default=str(REPO / "runs" / "retrieval"), help="library and query cache folder")
    p.add_argument("--json", help="also write the figures here (default: <cache>/benchmark.json)")
    p.add_argument("--queries", type=int, default=300, help="queries timed per library size")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "labels.csv").is_file():
        print(f"error: the real data is not at {data} (labels.csv + images/); this benchmark needs it "
              "(pass --data)", file=sys.stderr)
        return 2

    import numpy as np

    from backend.inference.predictor import Predictor
    from backend.retrieval.build import build_library, normalise
    from backend.retrieval.library import ReferenceLibrary, model_identity
    from backend.retrieval.query import similar_cases

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    table, splits, split_source = load_data(data)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    identity = model_identity(predictor)
    tag = identity.sha256[:12]
    train, test = table[splits == "train"], table[splits == "test"]
    t0 = time.perf_counter()
    lib_dir = cache / f"library_{tag}"
    report = build_library(train, lib_dir, predictor, model_path=args.checkpoint, img_dir=data / "images")
    build_s = time.perf_counter() - t0
    library = ReferenceLibrary.load(lib_dir)
    t0 = time.perf_counter()
    outputs = query_outputs(predictor, test, cache / f"test_queries_{tag}.npz")
    query_pass_s = time.perf_counter() - t0
    figures = {
        "model": identity.to_dict(), "checkpoint": args.checkpoint, "split": split_source,
        "library": {"path": str(lib_dir), "rows": len(library), "skipped": report.n_skipped,
                    "embedded_this_run": report.n_embedded, "build_s_this_run": build_s,
                    "feature_dim": library.feature_dim},
        "query_pass_s_this_run": query_pass_s,
        "load_average": list(os.getloadavg()), "cpus": os.cpu_count(),
    }
    figures["accuracy"] = accuracy_figures(library, test, outputs, args.k)

    feats = normalise(outputs["features"])
    real = np.asarray(library.embeddings)
    rng = np.random.default_rng(0)
    sizes = {}
    for n in (1_000, 10_000):
        sizes[n] = latency(real[: min(n, len(real))], feats, args.queries, args.k)
    synth = normalise(rng.standard_normal((100_000, library.feature_dim), dtype=np.float32))
    synth_q = normalise(rng.standard_normal((args.queries, library.feature_dim), dtype=np.float32))
    sizes[100_000] = latency(synth, synth_q, args.queries, args.k)
    sizes[100_000]["synthetic"] = True
    del synth
    figures["latency"] = {str(n): v for n, v in sizes.items()}
    times = []
    for path in test["image"].tolist()[:30]:  # end to end: decode, forward pass, exact search, vote
        t0 = time.perf_counter()
        similar_cases(predictor, path, library, k=args.k)
        times.append(time.perf_counter() - t0)
    figures["end_to_end_query_p50_ms"], figures["end_to_end_query_p95_ms"] = percentiles(times[1:])

    acc = figures["accuracy"]
    print(f"model {identity.describe()}; split {split_source}; load average {figures['load_average'][0]:.2f} on "
          f"{figures['cpus']} CPUs")
    print(f"library: {len(library)} training images ({report.n_skipped} skipped, {report.n_embedded} embedded this "
          f"run in {build_s:.0f} s); queries: {acc['n_queries']} test images ({acc['n_malignant']} malignant), "
          f"{acc['queries_with_exclusions']} with library rows left out ({acc['rows_excluded']} rows)")

    def ci(v):
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    print(f"malignant AUROC (95% CI, patients resampled), k = {args.k}:")
    print(f"  neighbour vote (knn_malignant)  {ci(acc['auroc_knn_vote'])}   (k=5: {acc['auroc_knn_vote_k5']:.3f}, "
          f"k=20: {acc['auroc_knn_vote_k20']:.3f})")
    print(f"  classifier (Prediction.malignant) {ci(acc['auroc_classifier'])}")
    print(f"  average of the two              {ci(acc['auroc_average'])}")
    print(f"on the {acc['n_diagnosed']} test images with one of the 8 diagnoses:")
    print(f"  diagnosis accuracy: neighbours' majority {ci(acc['diagnosis_accuracy_knn_majority'])}, classifier's "
          f"suggested diagnosis {ci(acc['diagnosis_accuracy_classifier'])}")
    print(f"  balanced accuracy (mean recall per diagnosis): neighbours' majority "
          f"{ci(acc['diagnosis_balanced_accuracy_knn_majority'])}, classifier's suggested diagnosis "
          f"{ci(acc['diagnosis_balanced_accuracy_classifier'])}")
    print(f"search latency per query, k = {args.k}, batch 1 (ms; target p95 <= {TARGET_P95_MS:g} at 100k):")
    print("  references  exact p50/p95      faiss HNSW p50/p95   p95 ratio  HNSW recall@10  HNSW build")
    for n, v in sizes.items():
        line = f"  {n:>10,}  {v['exact_p50_ms']:6.2f} / {v['exact_p95_ms']:6.2f}"
        if "hnsw_p50_ms" in v:
            line += (f"    {v['hnsw_p50_ms']:6.2f} / {v['hnsw_p95_ms']:6.2f}     {v['p95_ratio_exact_over_hnsw']:6.1f}x"
                     f"     {v['hnsw_recall_at_10']:.3f}        {v['hnsw_build_s']:.1f} s")
        else:
            line += "    (faiss not installed)"
        print(line + ("  synthetic" if v.get("synthetic") else ""))
    print(f"end-to-end query (decode + forward + search + vote, {library.feature_dim}-dim, {len(library)} refs): "
          f"p50 {figures['end_to_end_query_p50_ms']:.1f} ms, p95 {figures['end_to_end_query_p95_ms']:.1f} ms")
    out = Path(args.json) if args.json else cache / "benchmark.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
