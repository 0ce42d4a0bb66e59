"""Nearest-neighbour search over a library's unit embeddings: exact numpy, or faiss HNSW for large ones.

Cosine similarity of L2-normalised vectors is their dot product. Up to :data:`EXACT_MAX_ROWS`
references one matrix product is exact and fast enough (measured in ``benchmarks/retrieval.py``:
the scan is memory-bound, about 0.3-0.4 ms per 1,000 references of 1,280 floats on this 2-core
CPU, so its p95 passes 20 ms between 30,000 and 50,000). It runs with one BLAS thread: on a busy
2-core machine a two-thread product of a single query waits ~8 ms for the second thread (a
scheduler time slice) and gains nothing on a memory-bound scan. Above that, when the optional
``faiss-cpu`` package is installed (``pip install -e .[retrieval]``), a faiss HNSW graph answers in
about a millisecond at 100,000 references; without it the exact scan is used, slower but correct.

Both indexes take, per query, rows that must not be returned (the query's own lesion, patient or
image) and still return ``k`` results: the graph is asked for more candidates until ``k`` remain.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from backend.files import atomic_write_bytes

#: Libraries up to this many rows are searched exactly even when faiss is installed.
EXACT_MAX_ROWS = 30_000
#: HNSW graph parameters: links per node, candidate list while building and while searching.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128
ANN_CACHE = "ann_hnsw.faiss"

Exclusions = Sequence[np.ndarray | None] | None


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


_BLAS_LOCK = threading.Lock()
_BLAS: list[Any] = []  # the threadpoolctl controller, made on first use ([None] without threadpoolctl)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the enclosed numpy products on one BLAS thread (serialised, so the thread count is restored).

    Uses ``threadpoolctl`` (installed with scikit-learn); without it the products run as configured.
    """
    with _BLAS_LOCK:
        if not _BLAS:
            try:
                from threadpoolctl import ThreadpoolController

                _BLAS.append(ThreadpoolController())
            except ImportError:
                _BLAS.append(None)
        if _BLAS[0] is None:
            yield
            return
        with _BLAS[0].limit(limits=1, user_api="blas"):
            yield


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if q.shape[1] != dim:
        raise ValueError(f"queries have {q.shape[1]} features, the index {dim}")
    return q


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)


class ExactIndex:
    """Brute-force cosine search with one matrix product (exact; numpy only).

    Args:
        embeddings: ``(N, D)`` float32 unit vectors (a memory map is fine).
    """

    kind = "exact"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = embeddings

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: np.ndarray, k: int, exclude: Exclusions = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar rows per query, best first.

        Args:
            queries: ``(Q, D)`` (or ``(D,)``) unit vectors.
            k: Neighbours wanted per query.
            exclude: Per query, row numbers never to return (None for none).

        Returns:
            ``(similarities, rows)``, both ``(Q, k)``; fewer than ``k`` available rows are padded
            with ``-inf`` and ``-1``.
        """
        q = _as_queries(queries, self.embeddings.shape[1])
        sims_out, rows_out = _empty(len(q), k)
        if len(self) == 0 or k <= 0:
            return sims_out, rows_out
        with one_blas_thread():
            scores = q @ np.asarray(self.embeddings).T
        for i in range(len(q)):
            s = scores[i]
            if exclude is not None and exclude[i] is not None and len(exclude[i]):
                s = s.copy()
                s[exclude[i]] = -np.inf
            n = min(k, len(s))
            top = np.argpartition(-s, n - 1)[:n] if n < len(s) else np.arange(len(s))
            top = top[np.lexsort((top, -s[top]))]  # best first; ties by row number
            top = top[np.isfinite(s[top])]
            sims_out[i, : len(top)], rows_out[i, : len(top)] = s[top], top
        return sims_out, rows_out


class HNSWIndex:
    """Approximate cosine search on a faiss HNSW graph (``faiss.IndexHNSWFlat``, inner product).

    Args:
        embeddings: ``(N, D)`` float32 unit vectors.
        graph: A prebuilt ``faiss.IndexHNSWFlat`` of exactly these rows (e.g. read from the cache).
        m: Links per node.
        ef_construction: Candidate list size while building.
        ef_search: Candidate list size while searching (raised when more candidates are needed).
    """

    kind = "faiss-hnsw"

    def __init__(self, embeddings: np.ndarray, graph: Any = None, m: int = HNSW_M,
                 ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH) -> None:
        import faiss

        self.embeddings = embeddings
        self.ef_search = int(ef_search)
        if graph is None:
            graph = faiss.IndexHNSWFlat(int(embeddings.shape[1]), int(m), faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = int(ef_construction)
            for start in range(0, len(embeddings), 65536):  # bounded temporary copies of a memory map
                graph.add(np.ascontiguousarray(embeddings[start : start + 65536], dtype=np.float32))
        self.graph = graph

    def __len__(self) -> int:
        return int(self.graph.ntotal)

    def _raw(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        # Per call, not on the graph: every dashboard session searches the same graph at once.
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, fetch)
        sims, rows = self.graph.search(q, fetch, params=params)
        return sims, rows.astype(np.int64)

    def search(self, queries: np.ndarray, k: int, exclude: Exclusions = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ExactIndex.search`, approximately (recall measured by ``benchmarks/retrieval.py``).

        Args:
            queries: ``(Q, D)`` (or ``(D,)``) unit vectors.
            k: Neighbours wanted per query.
            exclude: Per query, row numbers never to return (None for none).
        """
        q = _as_queries(queries, int(self.graph.d))
        n = len(self)
        sims_out, rows_out = _empty(len(q), k)
        if n == 0 or k <= 0:
            return sims_out, rows_out
        excl = [np.zeros(0, np.int64) if exclude is None or exclude[i] is None else np.asarray(exclude[i])
                for i in range(len(q))]
        fetch = min(n, k + max(len(e) for e in excl))
        sims, rows = self._raw(q, fetch)
        for i in range(len(q)):
            want = min(k, n - len(np.unique(excl[i])))
            s_i, r_i, f_i = sims[i], rows[i], fetch
            while True:
                keep = (r_i >= 0) & ~np.isin(r_i, excl[i])
                if keep.sum() >= want or f_i >= n:
                    break
                f_i = min(n, f_i * 4)
                s_row, r_row = self._raw(q[i : i + 1], f_i)
                s_i, r_i = s_row[0], r_row[0]
            s_k, r_k = s_i[keep][:k], r_i[keep][:k]
            sims_out[i, : len(r_k)], rows_out[i, : len(r_k)] = s_k, r_k
        return sims_out, rows_out

    def to_bytes(self) -> bytes:
        """The graph serialised by faiss (for the on-disk cache)."""
        import faiss

        return faiss.serialize_index(self.graph).tobytes()

    @classmethod
    def from_bytes(cls, embeddings: np.ndarray, data: bytes) -> HNSWIndex:
        """Inverse of :meth:`to_bytes`.

        Args:
            embeddings: The rows the graph was built from.
            data: :meth:`to_bytes` output.
        """
        import faiss

        return cls(embeddings, graph=faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))


def make_index(embeddings: np.ndarray, kind: str = "auto", exact_max: int = EXACT_MAX_ROWS,
               cache_dir: str | Path | None = None, cache_key: str = "") -> ExactIndex | HNSWIndex:
    """The index for a library's embeddings.

    Args:
        embeddings: ``(N, D)`` float32 unit vectors.
        kind: ``auto`` (exact up to ``exact_max`` rows or without faiss, else HNSW), ``exact`` or
            ``hnsw`` (requires faiss).
        exact_max: Largest library searched exactly by ``auto``.
        cache_dir: Folder to keep a built HNSW graph in (the library folder); a graph is reused
            only when it was built for ``cache_key``. None: no cache.
        cache_key: Identifies the embeddings (the library's ``build_id``).

    Raises:
        ValueError: Unknown ``kind``.
        ImportError: ``kind="hnsw"`` without faiss.
    """
    if kind not in ("auto", "exact", "hnsw"):
        raise ValueError(f"unknown index kind {kind!r}; expected auto, exact or hnsw")
    use_hnsw = kind == "hnsw" or (kind == "auto" and len(embeddings) > exact_max and faiss_available())
    if not use_hnsw:
        return ExactIndex(embeddings)
    cache = Path(cache_dir) / ANN_CACHE if cache_dir is not None and cache_key else None
    # The stamp travels in the same file as the graph (one atomic write): a graph can never be read
    # beside another build's stamp, whatever two processes do at once.
    stamp = json.dumps({"build_id": cache_key, "rows": len(embeddings), "dim": int(embeddings.shape[1]),
                        "m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}).encode("utf-8")
    if cache is not None and cache.is_file():
        try:
            head, _, body = cache.read_bytes().partition(b"\n")
            if head == stamp:
                cached = HNSWIndex.from_bytes(embeddings, body)
                if len(cached) == len(embeddings) and int(cached.graph.d) == int(embeddings.shape[1]):
                    return cached
        except (OSError, RuntimeError):
            pass  # a damaged cache is rebuilt below
    index = HNSWIndex(embeddings)
    if cache is not None:
        with contextlib.suppress(OSError):  # a read-only library is searched without a cache
            atomic_write_bytes(cache, stamp + b"\n" + index.to_bytes())
    return index
