"""Lesion- and patient-grouped, diagnosis-stratified train/val/test splits.

Images of one lesion, and lesions of one patient, must never be split across train and test: the
model would be scored on a lesion it was trained on. Rows are therefore grouped into the connected
components of "shares a ``lesion_id`` or a ``patient_id``" (a patient's lesions chain together
even when only some rows carry the patient id), and whole groups are assigned to splits.

scikit-learn's ``StratifiedGroupKFold`` only makes equal folds, not arbitrary fractions, so the
assignment is a seeded greedy one: groups are shuffled, taken largest first, and each goes to the
split whose per-class counts it brings closest to the targets (least squared relative error).
With thousands of small groups this lands within a fraction of a percent of every target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from backend.data.config import SplitConfig
from backend.data.csv_rows import LINE, raise_for_rows, read_csv_rows
from backend.data.schema import ALL_DIAGNOSES
from backend.errors import DataFormatError

SPLITS: tuple[str, ...] = ("train", "val", "test")
GROUP_COLUMNS: tuple[str, ...] = ("lesion_id", "patient_id")


def split_groups(table: pd.DataFrame) -> np.ndarray:
    """Group number of every row: connected components of rows sharing a lesion_id or patient_id.

    Rows with neither id are groups of their own. Numbers are 0..n_groups-1, in order of first row.
    """
    n = len(table)
    rows, keys = [], []
    offset = n
    for column in GROUP_COLUMNS:
        if column not in table.columns:
            continue
        values = table[column].astype("string").str.strip()  # missing ids stay missing, not the text "nan"
        present = (values.notna() & (values != "")).to_numpy()
        codes, uniques = pd.factorize(values[present])
        rows.append(np.flatnonzero(present))
        keys.append(codes + offset)
        offset += len(uniques)
    if not rows:
        return np.arange(n)
    r, k = np.concatenate(rows), np.concatenate(keys)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, k)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0]


def strata(table: pd.DataFrame) -> pd.Series:
    """Stratification key per row: the diagnosis, or ``label=0``/``label=1`` where it is unknown."""
    label = "label=" + table["label"].astype("Int64").astype("str")
    return table["diagnosis"].astype("str").fillna(label).rename("stratum")


def _stratum_order(values: pd.Series) -> list[str]:
    present = set(values)
    return [d for d in ALL_DIAGNOSES if d in present] + sorted(present - set(ALL_DIAGNOSES))


def assign_splits(table: pd.DataFrame, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 42) -> pd.Series:
    """Assign every row to ``train``, ``val`` or ``test``, grouped and stratified (see module docs).

    Args:
        table: Lesion table (needs ``diagnosis``, ``label``; uses ``lesion_id``/``patient_id``).
        val_frac: Target fraction of rows (and of each class) in validation; 0 gives no val split.
        test_frac: Same for test.
        seed: Seed of the group shuffle; the same table and seed always give the same splits.

    Returns:
        Series of split names, index aligned with ``table``.

    Raises:
        ConfigError: Fractions outside [0, 1) or leaving no training data, or a negative seed.
    """
    SplitConfig(val_frac=val_frac, test_frac=test_frac, seed=seed).validate()
    fracs = np.array([1.0 - val_frac - test_frac, val_frac, test_frac])
    if len(table) == 0:
        return pd.Series([], index=table.index, dtype="str", name="split")
    groups = split_groups(table)
    classes, class_names = pd.factorize(strata(table))
    counts = np.zeros((groups.max() + 1, len(class_names)))
    np.add.at(counts, (groups, classes), 1.0)
    totals = counts.sum(axis=0)
    target = fracs[:, None] * totals[None, :]
    weight = 1.0 / totals**2  # squared error in fraction-of-class units: every class counts alike
    current = np.zeros_like(target)
    blocked = np.where(fracs > 0, 0.0, np.inf)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts.sum(axis=1)[order], kind="stable")]
    assignment = np.empty(len(counts), dtype=np.int64)
    for g in order:
        cols = np.flatnonzero(counts[g])
        v = counts[g, cols]
        # change of sum_c w_c (current + v - target)^2 if the group joins each split
        delta = ((2.0 * (current[:, cols] - target[:, cols]) + v) * v * weight[cols]).sum(axis=1) + blocked
        s = int(np.argmin(delta))
        assignment[g] = s
        current[s, cols] += v
    names = np.asarray(SPLITS)[assignment[groups]]
    return pd.Series(names, index=table.index, dtype="str", name="split")


def _check_aligned(table: pd.DataFrame, splits: pd.Series) -> pd.Series:
    aligned = splits.reindex(table.index)
    bad = ~aligned.isin(SPLITS)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rows have no valid split (e.g. row {bad.idxmax()!r}: "
                         f"{aligned[bad.idxmax()]!r}); expected {', '.join(SPLITS)}")
    return aligned


def write_splits(table: pd.DataFrame, splits: pd.Series, path: str | Path) -> Path:
    """Save the assignment as CSV ``image_id,split`` (+ diagnosis, lesion_id, patient_id to read it by eye)."""
    path = Path(path)
    out = pd.DataFrame({"image_id": table["image_id"], "split": _check_aligned(table, splits)})
    for column in ("diagnosis", *GROUP_COLUMNS):
        if column in table.columns:
            out[column] = table[column]
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


def read_splits(path: str | Path, table: pd.DataFrame) -> pd.Series:
    """Read a split CSV back for ``table``: every table image_id must be assigned exactly once.

    Returns:
        Series of split names aligned with ``table.index``.

    Raises:
        DataFormatError: Missing columns, an unknown split name, an id listed twice, an id the table
            does not have, or table ids the file does not assign (counted, a few named).
    """
    path = Path(path)
    raw = read_csv_rows(path, required=("image_id", "split"))
    ids = raw["image_id"].str.strip()
    split = raw["split"].str.strip().str.lower()
    raise_for_rows(raw, ~split.isin(SPLITS), path, "split", f"unknown split {{value!r}} (expected "
                   f"{', '.join(SPLITS)})", raw["split"])
    repeat = ids.duplicated(keep="first")
    if repeat.any():
        first = ids[repeat].iloc[0]
        lines = " and ".join(str(x) for x in raw[LINE][ids == first].head(2))
        raise_for_rows(raw, repeat, path, "image_id", f"image_id {first!r} is listed twice, on lines {lines}")
    table_ids = table["image_id"].astype("str")
    unknown = ~ids.isin(table_ids)
    raise_for_rows(raw, unknown, path, "image_id", "image_id {value!r} is not in the lesion table", ids)
    assigned = table_ids.map(pd.Series(split.to_numpy(), index=ids.to_numpy()))
    missing = assigned.isna()
    if missing.any():
        examples = ", ".join(repr(x) for x in table_ids[missing].head(5))
        raise DataFormatError(path, f"{int(missing.sum())} of {len(table)} image ids of the lesion table have no "
                                    f"split in this file (e.g. {examples})", field="image_id")
    _raise_for_leaks(path, table, assigned, pd.Series(raw[LINE].to_numpy(), index=ids.to_numpy()))
    return assigned.astype("str").rename("split")


def _raise_for_leaks(path: Path, table: pd.DataFrame, assigned: pd.Series, lines: pd.Series) -> None:
    """Refuse a split file that puts one lesion's or one patient's images in two splits.

    Images of one lesion (or patient) are near-copies of each other: one in train and one in test
    would score memory, not skill. The first such lesion or patient is named with two of its images,
    their splits and their lines in ``path``.
    """
    for column in GROUP_COLUMNS:
        if column not in table.columns:
            continue
        ids = table[column].astype("string").str.strip()
        known = ids.notna() & (ids != "")
        spans = assigned[known].groupby(ids[known].to_numpy()).nunique()
        if not (spans > 1).any():
            continue
        group = spans.index[spans.to_numpy() > 1][0]
        rows = table.index[known & (ids == group)]
        first = rows[0]
        other = next(r for r in rows if assigned[r] != assigned[first])
        where = [(image, assigned[r], lines.get(image))
                 for r in (first, other) for image in (str(table.at[r, "image_id"]),)]
        raise DataFormatError(path, f"{column} {group!r} is in two splits: image {where[0][0]!r} in {where[0][1]} "
                                    f"(line {where[0][2]}) and image {where[1][0]!r} in {where[1][1]} (line "
                                    f"{where[1][2]}); keep all images of one {column.split('_')[0]} in one split "
                                    "(python -m scripts.make_splits writes such a file)", field="split")


def split_summary(table: pd.DataFrame, splits: pd.Series) -> pd.DataFrame:
    """Rows per stratum (diagnosis, or label where unknown) and split, with a ``total`` column and ``all`` row."""
    key = strata(table)
    counts = pd.crosstab(key, _check_aligned(table, splits))
    counts = counts.reindex(index=_stratum_order(key), columns=list(SPLITS), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.loc["all"] = counts.sum(axis=0)
    counts.index.name, counts.columns.name = "diagnosis", None
    return counts.astype(np.int64)
