"""Fixtures shared by the workflow tests: the training tests' synthetic dataset."""

from tests.training.conftest import dataset  # noqa: F401  (re-exported as a fixture)
