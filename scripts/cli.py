"""What the batch CLIs share: run the work and turn a DermaLens error into one line and exit code 2.

Only ``backend.errors`` is imported here (no torch), so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from backend.errors import DermaLensError

#: Exit code of a run stopped by bad input, a bad config or an unusable model (the message says which).
ERROR_EXIT = 2


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)``, or ``error: <message>`` on stderr and :data:`ERROR_EXIT` for a :class:`DermaLensError`."""
    try:
        return run(args)
    except DermaLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return ERROR_EXIT
