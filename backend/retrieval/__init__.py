"""Similar confirmed cases: search the user's own reference library of labelled images.

Import the submodules directly:

* :mod:`backend.retrieval.library`: the library folder, its manifest, the model it was built with.
* :mod:`backend.retrieval.build`: build, resume or update a library from a lesion table.
* :mod:`backend.retrieval.index`: exact numpy search, faiss HNSW for large libraries.
* :mod:`backend.retrieval.query`: a query's neighbours and their vote (``similar_cases``).
"""
