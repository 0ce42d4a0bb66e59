"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """48 synthetic 40 px lesion images with labels.csv, made once per test module."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), n=48, size=40)
