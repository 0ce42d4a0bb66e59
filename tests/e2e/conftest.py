"""Fixtures of the real-browser tests: the session's tiny model bundles (shared with ``tests/app``)."""

from __future__ import annotations

import pytest

from tests.app.tiny_models import TinyModels, tiny_models_dir


@pytest.fixture(scope="session")
def e2e_models(tmp_path_factory) -> TinyModels:
    """Tiny trained bundles (built once per pytest session, whichever test asks first)."""
    return tiny_models_dir(tmp_path_factory)
