"""Similar confirmed cases: search the user's own reference library of labelled images.

* :mod:`backend.retrieval.library`: the library folder, its manifest, the model it was built with.
* :mod:`backend.retrieval.build`: build, resume or update a library from a lesion table.
* :mod:`backend.retrieval.index`: exact numpy search, faiss HNSW for large libraries.
* :mod:`backend.retrieval.query`: a query's neighbours and their vote.

Importing this package is cheap: names load on first access (the app's first paint, CLI ``--help``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ReferenceLibrary": "backend.retrieval.library",
    "ReferenceLibraryError": "backend.retrieval.library",
    "LibraryModelMismatchError": "backend.retrieval.library",
    "ModelIdentity": "backend.retrieval.library",
    "model_identity": "backend.retrieval.library",
    "is_library": "backend.retrieval.library",
    "read_manifest": "backend.retrieval.library",
    "build_library": "backend.retrieval.build",
    "BuildReport": "backend.retrieval.build",
    "ExactIndex": "backend.retrieval.index",
    "HNSWIndex": "backend.retrieval.index",
    "make_index": "backend.retrieval.index",
    "Neighbour": "backend.retrieval.query",
    "NeighbourVote": "backend.retrieval.query",
    "SimilarCases": "backend.retrieval.query",
    "neighbour_vote": "backend.retrieval.query",
    "similar_cases": "backend.retrieval.query",
    "search": "backend.retrieval.query",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'backend.retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
