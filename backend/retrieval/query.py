"""Similar confirmed cases of a query image, and the neighbours' vote.

The query is embedded exactly like the library rows (decoded by ``Predictor.load``, pooled
backbone features of ``Predictor.raw_outputs``, L2-normalised), the ``k`` most similar rows are
found by cosine similarity (:mod:`backend.retrieval.index`), and the neighbours vote: the share
that are malignant (diagnosis MEL, BCC or SCC, or label 1) and the most common diagnosis.

A query that is itself in the library must not find itself: rows sharing the query's
``lesion_id`` or ``patient_id`` (when given) and rows whose file bytes or decoded pixels hash to
the query's are never returned, so the vote is never "7 of 10, one of which is this very image".
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from backend.retrieval.build import normalise, pixels_sha256
from backend.retrieval.library import LibraryModelMismatchError, ReferenceLibrary, model_identity

#: Neighbours returned by default.
DEFAULT_K = 10
#: Neighbours at least this similar are compared with the query's pixels (a copy scores 0.99-1.0).
COPY_SIMILARITY = 0.98
#: Mean absolute difference (grey levels, 0-255) of two 32 x 32 grey thumbnails below which a
#: neighbour is the query's own picture re-encoded, resized or re-saved, not another photograph.
#: Copies of 40 development images (PNG at twice the size, JPEG quality 60, half size) differed by
#: at most 0.75; a second shot of a lesion by 5.6 and more.
COPY_PIXEL_DIFFERENCE = 2.0
#: Columns ``scripts/predict.py --reference`` adds to a predictions CSV (see :meth:`SimilarCases.to_row`).
RETRIEVAL_COLUMNS: tuple[str, ...] = ("knn_malignant", "knn_diagnosis", "neighbours")


@dataclass(frozen=True)
class Neighbour:
    """One similar confirmed case.

    Attributes:
        rank: 1 for the most similar.
        row: Row number in the library.
        image: Its image name (relative to the library's image folder).
        image_id: Its image id.
        diagnosis: Confirmed diagnosis code (blank when the source gave only a label).
        label: 1 malignant, 0 benign.
        malignant: Diagnosis MEL/BCC/SCC or label 1.
        similarity: Cosine similarity of the embeddings, in ``[-1, 1]``.
        lesion_id: Its lesion id (blank when unknown).
        patient_id: Its patient id (blank when unknown).
        thumbnail: JPEG bytes of its thumbnail.
    """

    rank: int
    row: int
    image: str
    image_id: str
    diagnosis: str
    label: int
    malignant: bool
    similarity: float
    lesion_id: str = ""
    patient_id: str = ""
    thumbnail: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class NeighbourVote:
    """What the neighbours say.

    Attributes:
        k: Neighbours that voted.
        n_malignant: How many of them are malignant.
        share_malignant: ``n_malignant / k`` (NaN when ``k`` is 0).
        majority_diagnosis: Most common known diagnosis (ties: the larger summed similarity); blank
            when none is known.
        majority_count: How many neighbours have it.
        counts: Neighbours per diagnosis (``""`` for unknown), most common first.
    """

    k: int
    n_malignant: int
    share_malignant: float
    majority_diagnosis: str
    majority_count: int
    counts: dict[str, int]

    def summary(self) -> str:
        """``7 of 10 most similar were malignant``."""
        if self.k == 0:
            return "no similar cases found"
        verb = "was" if self.n_malignant == 1 else "were"
        return f"{self.n_malignant} of {self.k} most similar {verb} malignant"

    def diagnosis_summary(self) -> str:
        """``most common diagnosis: NV (5 of 10)``."""
        if not self.majority_diagnosis:
            return "no diagnosis known among them"
        # UNK is ISIC's label for a benign lesion that is none of the named diagnoses: said in words.
        name = "UNK, a benign lesion none of the 8 named diagnoses" if self.majority_diagnosis == "UNK" else (
            self.majority_diagnosis)
        return f"most common diagnosis: {name} ({self.majority_count} of {self.k})"


@dataclass(frozen=True)
class SimilarCases:
    """The result of one query.

    Attributes:
        query: The query image's name.
        neighbours: Most similar first.
        vote: Their vote.
        n_excluded: Library rows left out as the query's own image, lesion or patient.
        library: The library's name.
    """

    query: str
    neighbours: list[Neighbour]
    vote: NeighbourVote
    n_excluded: int = 0
    library: str = ""

    @property
    def neighbour_names(self) -> list[str]:
        """The neighbours' image ids, most similar first.

        Ids, not file names: a reference image's folders (``Doe_Jane_1961/visit1.jpg``) often carry
        another patient's name, which neither a screen nor an export should show.
        """
        return [n.image_id for n in self.neighbours]

    def to_row(self) -> dict[str, Any]:
        """The :data:`RETRIEVAL_COLUMNS` of a predictions CSV row.

        ``knn_malignant`` is the share of malignant neighbours (None when there are none),
        ``knn_diagnosis`` their most common diagnosis and ``neighbours`` their image names joined
        by ``;``, most similar first.
        """
        share = self.vote.share_malignant if self.vote.k else None
        return {"knn_malignant": share, "knn_diagnosis": self.vote.majority_diagnosis,
                "neighbours": ";".join(self.neighbour_names)}


def neighbour_vote(diagnoses: Sequence[str], malignant: Sequence[bool], similarities: Sequence[float]
                   ) -> NeighbourVote:
    """Vote of a set of neighbours.

    Args:
        diagnoses: Their diagnosis codes (blank for unknown).
        malignant: Whether each is malignant.
        similarities: Their similarity to the query (breaks ties between diagnoses).
    """
    k = len(diagnoses)
    n_mal = int(sum(bool(m) for m in malignant))
    counts = Counter(str(d) for d in diagnoses)
    weight: dict[str, float] = {}
    for d, s in zip(diagnoses, similarities, strict=True):
        weight[str(d)] = weight.get(str(d), 0.0) + float(s)
    known = [d for d in counts if d]
    majority = max(known, key=lambda d: (counts[d], weight[d]), default="")
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], -weight[kv[0]])))
    return NeighbourVote(k, n_mal, n_mal / k if k else float("nan"), majority, counts.get(majority, 0)
                         if majority else 0, ordered)


def excluded_rows(library: ReferenceLibrary, lesion_id: str | None = None, patient_id: str | None = None,
                  sha256: str | None = None, pixels_hash: str | None = None) -> np.ndarray:
    """Library rows a query must not return: same lesion, same patient, same file or same pixels.

    Args:
        library: The library searched.
        lesion_id: The query's lesion id, when known.
        patient_id: The query's patient id, when known.
        sha256: SHA-256 of the query's file bytes, when it came from a file or an upload.
        pixels_hash: :func:`~backend.retrieval.build.pixels_sha256` of the decoded query.
    """
    parts = [library.rows_where("lesion_id", lesion_id), library.rows_where("patient_id", patient_id),
             library.rows_where("sha256", sha256), library.rows_where("pixels_sha256", pixels_hash)]
    return np.unique(np.concatenate(parts)).astype(np.int64)


def _one_per_lesion(library: ReferenceLibrary, q: np.ndarray, k: int,
                    exclude: Sequence[np.ndarray | None] | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows per query with at most one row (the nearest) per library lesion.

    Several photos of one lesion are one case: letting each vote would count that lesion several
    times. Rows without a lesion id are cases of their own. More neighbours are fetched until ``k``
    lesions are found or the library is exhausted.
    """
    index, n, cases = library.index(), len(library), library.case_keys
    fetch = min(n, 2 * k)  # a lesion often has two photos: one search usually finds k lesions
    while True:
        sims, rows = index.search(q, fetch, exclude)
        out_s, out_r = np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
        short = False
        for i in range(len(q)):
            seen: set[str] = set()
            kept = 0
            for row, sim in zip(rows[i].tolist(), sims[i].tolist(), strict=True):
                if row < 0 or kept == k:
                    break
                key = cases[row]
                if key in seen:
                    continue
                seen.add(key)
                out_s[i, kept], out_r[i, kept] = sim, row
                kept += 1
            short = short or (kept < k and (rows[i] >= 0).sum() == fetch)
        if not short or fetch >= n:
            return out_s, out_r
        fetch = min(n, fetch * 4)


def _grey_thumb(jpeg_or_image: bytes | np.ndarray) -> np.ndarray:
    """A 32 x 32 grey float picture of a thumbnail JPEG or an RGB array, for comparing pixels."""
    if isinstance(jpeg_or_image, bytes):
        image = cv2.imdecode(np.frombuffer(jpeg_or_image, np.uint8), cv2.IMREAD_GRAYSCALE)
    else:  # straight to 32 x 32 by area averaging: as the library's thumbnail would give, a few times faster
        image = cv2.cvtColor(np.ascontiguousarray(jpeg_or_image), cv2.COLOR_RGB2GRAY)
    return cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def _copies(library: ReferenceLibrary, image: np.ndarray, rows: np.ndarray, sims: np.ndarray) -> list[int]:
    """Which of a query's neighbours are its own picture again (re-encoded, resized, re-saved).

    A copy the file and pixel hashes miss (a JPEG exported as PNG decodes to other pixels) would
    come back as the query's most similar "confirmed case" and vote for itself. Only neighbours
    scoring :data:`COPY_SIMILARITY` are compared, on the library's thumbnails: same shape and
    pixels within :data:`COPY_PIXEL_DIFFERENCE` grey levels. Another photograph of a lesion,
    taken again, differs by far more.
    """
    h, w = image.shape[:2]
    query = None
    found = []
    for row, sim in zip(rows.tolist(), sims.tolist(), strict=True):
        if row < 0 or sim < COPY_SIMILARITY:
            continue
        thumb = library.thumbnail(row)
        th, tw = _thumb_shape(thumb)
        if abs(tw / th - w / h) > 0.02:
            continue
        query = _grey_thumb(image) if query is None else query
        if float(np.abs(_grey_thumb(thumb) - query).mean()) < COPY_PIXEL_DIFFERENCE:
            found.append(int(row))
    return found


def _thumb_shape(jpeg: bytes) -> tuple[int, int]:
    """``(height, width)`` of a thumbnail JPEG from its header."""
    with Image.open(io.BytesIO(jpeg)) as picture:
        return picture.height, picture.width


def search(library: ReferenceLibrary, features: np.ndarray, k: int = DEFAULT_K,
           exclude: Sequence[np.ndarray | None] | None = None, names: Sequence[str] | None = None,
           thumbnails: bool = True, images: Sequence[np.ndarray | None] | None = None) -> list[SimilarCases]:
    """Neighbours and vote of already computed query features.

    Args:
        library: The library searched.
        features: ``(Q, D)`` backbone features (normalised here).
        k: Neighbours per query.
        exclude: Per query, rows never to return (:func:`excluded_rows`).
        names: Per query, its name (default ``query_<i>``).
        thumbnails: Attach each neighbour's thumbnail bytes.
        images: Per query, its decoded RGB pixels (or None): a neighbour that is the query's own
            picture again (:func:`_copies`) is left out like an excluded row.

    Raises:
        LibraryModelMismatchError: The features' length is not the library's.
    """
    q = normalise(np.atleast_2d(features))
    if len(library) == 0:  # an empty library (every image was skipped) answers with no neighbours
        sims, rows = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    elif q.shape[1] != library.feature_dim:
        raise LibraryModelMismatchError(f"reference library {library.path} holds {library.feature_dim}-dim "
                                        f"embeddings, the query has {q.shape[1]}: it was built with another model")
    else:
        sims, rows = _one_per_lesion(library, q, int(k), exclude)
        if images is not None:
            exclude = [None if e is None else np.asarray(e, np.int64) for e in (exclude or [None] * len(q))]
            for i, image in enumerate(images):
                copies = [] if image is None else _copies(library, image, rows[i], sims[i])
                if copies:  # search again without them, their lesions and their patients
                    meta = library.rows
                    same = [library.rows_where(column, str(meta[column].iat[row]))
                            for row in copies for column in ("lesion_id", "patient_id")]
                    exclude[i] = np.unique(np.concatenate([exclude[i] if exclude[i] is not None else
                                                           np.zeros(0, np.int64), np.asarray(copies, np.int64),
                                                           *same]).astype(np.int64))
                    s_i, r_i = _one_per_lesion(library, q[i : i + 1], int(k), [exclude[i]])
                    sims[i], rows[i] = s_i[0], r_i[0]
    meta = library.rows
    results = []
    for i in range(len(q)):
        neighbours = []
        for rank, (row, sim) in enumerate(zip(rows[i].tolist(), sims[i].tolist(), strict=True), start=1):
            if row < 0:
                break
            neighbours.append(Neighbour(
                rank=rank, row=row, image=str(meta["image"].iat[row]), image_id=str(meta["image_id"].iat[row]),
                diagnosis=str(meta["diagnosis"].iat[row]), label=int(meta["label"].iat[row]),
                malignant=bool(library.malignant[row]), similarity=float(sim),
                lesion_id=str(meta["lesion_id"].iat[row]), patient_id=str(meta["patient_id"].iat[row]),
                thumbnail=library.thumbnail(row) if thumbnails else b""))
        vote = neighbour_vote([n.diagnosis for n in neighbours], [n.malignant for n in neighbours],
                              [n.similarity for n in neighbours])
        n_excl = 0 if exclude is None or exclude[i] is None else len(exclude[i])
        name = names[i] if names is not None else f"query_{i}"
        results.append(SimilarCases(name, neighbours, vote, n_excl, library.name))
    return results


def file_sha256(item: Any) -> str | None:
    """SHA-256 of a query's encoded bytes (path, ``(name, bytes)``, bytes or upload); None for arrays.

    Args:
        item: A query as ``Predictor.load`` accepts it.
    """
    data: bytes | None = None
    if isinstance(item, (str, os.PathLike)):
        try:
            data = Path(item).read_bytes()
        except OSError:
            return None
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (bytes, bytearray, memoryview)):
        data = bytes(item[1])
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    elif hasattr(item, "getvalue"):
        data = bytes(item.getvalue())
    return None if data is None else hashlib.sha256(data).hexdigest()


def load_library(library: ReferenceLibrary | str | os.PathLike[str]) -> ReferenceLibrary:
    """A loaded library (paths are loaded; loaded ones pass through).

    Args:
        library: A :class:`ReferenceLibrary` or its folder.
    """
    return library if isinstance(library, ReferenceLibrary) else ReferenceLibrary.load(library)


def similar_cases(predictor: Any, image: Any, library: ReferenceLibrary | str | os.PathLike[str],
                  k: int = DEFAULT_K, lesion_id: str | None = None, patient_id: str | None = None,
                  model_path: str | None = None) -> SimilarCases:
    """The ``k`` library cases most similar to ``image``, with the neighbours' vote.

    Args:
        predictor: The ``Predictor`` the library was built with.
        image: A query as ``Predictor.prepare`` accepts it (path, ``(name, bytes)``, bytes, array, upload,
            ``PreparedInput``).
        library: A loaded :class:`ReferenceLibrary` or its folder.
        k: Neighbours wanted.
        lesion_id: The query's lesion id: that lesion's rows are not returned.
        patient_id: The query's patient id: that patient's rows are not returned.
        model_path: The predictor's bundle folder or ``.ckpt``, for the rebuild command of a mismatch.

    Raises:
        LibraryModelMismatchError: The library was built with another model (the message says how
            to rebuild it).
        ReferenceLibraryError: The library cannot be loaded.
        ImageLoadError: The image cannot be decoded.
    """
    library = load_library(library)
    library.check_model(model_identity(predictor), model_path)
    prepared = predictor.prepare(image)  # a prepared upload keeps its decode and network input
    raw, _, _ = predictor.raw_outputs([prepared])
    exclude = excluded_rows(library, lesion_id, patient_id, file_sha256(image), pixels_sha256(prepared.image))
    return search(library, raw.features, k, [exclude], [prepared.name], images=[prepared.image])[0]
