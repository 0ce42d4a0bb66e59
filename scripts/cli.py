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
#: What a CLI reports in one line instead of a traceback: the project's own errors (they name the file,
#: row or key), and the operating system's refusals of a path (a folder where a file is written, a
#: file where a folder is, no permission, a full disk), which name their file.
REPORTED_ERRORS: tuple[type[BaseException], ...] = (DermaLensError, OSError)


def error_line(err: BaseException) -> str:
    """``error: <message>``: a :class:`DermaLensError` as it reads, an ``OSError`` as ``<file>: <reason>``."""
    if isinstance(err, OSError) and not isinstance(err, DermaLensError) and err.filename is not None:
        return f"error: {err.filename}: {err.strerror or err}"
    return f"error: {err}"


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)``, or :func:`error_line` on stderr and :data:`ERROR_EXIT` for a :data:`REPORTED_ERRORS` one."""
    try:
        return run(args)
    except REPORTED_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return ERROR_EXIT
