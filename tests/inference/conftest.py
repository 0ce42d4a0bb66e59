"""One torch thread while these tests run.

On a busy 2-core machine, two OpenMP threads that wait for each other at every operator make
small CPU models 10-20x slower than one thread; the tests measure correctness, not speed.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
