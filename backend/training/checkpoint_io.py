"""Lightning checkpoint I/O that writes atomically and reads safely.

Lightning's default ``TorchCheckpointIO`` writes through an fsspec transaction: the bytes go to
a temporary file in the system temp folder and are then moved over the target. When that folder
is on another file system than the run (a local ``/tmp`` and a network run folder, the usual
cluster layout) the move is a copy into the open target, so a job killed mid-copy leaves a
truncated ``last.ckpt``; nothing is fsynced either, and every killed write leaves a checkpoint-
sized file behind in ``/tmp``. Resuming reads with ``torch.load``'s default, and a refused file
surfaces as a raw ``UnpicklingError`` traceback.

:class:`SafeCheckpointIO` replaces both halves: saves go through
:func:`backend.files.atomic_torch_save` (temporary file beside the target, fsync,
``os.replace``), so a kill at any moment leaves the previous checkpoint intact; loads go through
:func:`backend.files.safe_torch_load` (``weights_only=True``), so a checkpoint carrying
pickled code is refused with a :class:`backend.errors.CheckpointError` before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from backend.files import atomic_torch_save, safe_torch_load

#: Leftovers of interrupted :func:`atomic_torch_save` calls in a checkpoint folder.
TEMP_PATTERN = ".*.ckpt.*.tmp"


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic same-folder writes and ``weights_only`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (the old file stays whole until the new one is).

        Raises:
            TypeError: When ``storage_options`` is given (local files only).
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} writes local files and takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Read a checkpoint with ``weights_only=True`` onto the CPU (Lightning moves the states after).

        Raises:
            CheckpointError: The file is missing, unreadable, or holds anything but tensors and plain data.
        """
        return safe_torch_load(path)


def remove_stale_temp_files(ckpt_dir: Path) -> list[Path]:
    """Delete the temporary files that killed checkpoint writes left in ``ckpt_dir``; returns them.

    Only call this from the one process that starts a run, before training begins (no write is in flight).
    """
    removed = []
    if ckpt_dir.is_dir():
        for path in ckpt_dir.glob(TEMP_PATTERN):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
