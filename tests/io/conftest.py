"""One torch thread while these tests run (the same fixture as tests/inference: see its docstring)."""

from __future__ import annotations

from tests.inference.conftest import _one_torch_thread  # noqa: F401  (autouse fixture, registered by import)
