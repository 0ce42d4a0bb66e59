"""Files of a follow-up comparison: what ``scripts/compare_visits.py`` reads and writes.

:func:`compare_files` decodes both photos with the project's decoder (EXIF orientation applied,
any unreadable file is an :class:`~backend.errors.ImageLoadError` naming it), compares them and
writes into the output folder:

* ``change.json``: :meth:`FollowUpResult.to_dict` (``aligned``, ``area_change``, ``diameter_change``,
  ``risk_before``, ``risk_after``, ``flags``...), always;
* ``comparison.png``: the aligned side by side, and ``change_map.png``: where the outline moved and
  how the colour changed; only for an aligned pair (an unaligned pair gets no overlay at all).

The PNGs are written from pixel arrays, so no EXIF or other metadata of the input files reaches them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from backend.data.images import load_image
from backend.followup.change import FollowUpResult, compare_visits
from backend.followup.registration import RegistrationConfig
from backend.followup.render import change_map_image, comparison_image, png_bytes
from backend.inference.predictor import Predictor

CHANGE_FILE = "change.json"
COMPARISON_FILE = "comparison.png"
CHANGE_MAP_FILE = "change_map.png"


def write_report(result: FollowUpResult, output: str | os.PathLike[str]) -> list[Path]:
    """Write ``change.json`` and, for an aligned pair, ``comparison.png`` and ``change_map.png``.

    Args:
        result: The comparison.
        output: Folder to write into (created if missing; files of an earlier run are replaced,
            and stale pictures removed when this pair is not aligned).

    Returns:
        The files written.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / CHANGE_FILE]
    written[0].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    pictures = {COMPARISON_FILE: comparison_image, CHANGE_MAP_FILE: change_map_image}
    for name, make in pictures.items():
        path = folder / name
        if result.aligned:
            path.write_bytes(png_bytes(make(result)))
            written.append(path)
        elif path.is_file():
            path.unlink()
    return written


def compare_files(before: str | os.PathLike[str], after: str | os.PathLike[str], output: str | os.PathLike[str],
                  model: str | os.PathLike[str] | None = None, config: RegistrationConfig | None = None
                  ) -> tuple[FollowUpResult, list[Path]]:
    """Compare two image files of one lesion and write the report (see the module docstring).

    Args:
        before: Baseline image file.
        after: Follow-up image file.
        output: Folder for ``change.json`` and the pictures.
        model: Model bundle folder or ``.ckpt`` for risk and feature distance; None for none.
        config: Registration settings.

    Returns:
        The comparison and the files written.

    Raises:
        ImageLoadError: An image file cannot be read (the message names it).
        CheckpointError: The model cannot be loaded.
        FollowUpError: The photos align but no lesion can be found in one of them.
    """
    before_image = load_image(before)
    after_image = load_image(after)
    predictor: Any = None
    if model is not None:

        predictor = Predictor.from_checkpoint(model)
    # The report names each photo by its file name only: folders often carry a patient's name.
    result = compare_visits(before_image, after_image, predictor, before_name=Path(before).name,
                            after_name=Path(after).name, model_inputs=(str(before), str(after)), config=config)
    return result, write_report(result, output)
