"""Pictures of a follow-up comparison: aligned side by side, change map, blend and swipe views.

All pictures are plain RGB uint8 arrays made from the pixels only (so nothing of the original
files' EXIF can reach them); :func:`png_bytes` encodes one without metadata. They need an aligned
:class:`~backend.followup.change.FollowUpResult`: a pair that could not be aligned gets no overlay.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from backend.errors import FollowUpError

#: Outline colours (RGB): baseline lesion, follow-up lesion.
BEFORE_COLOUR: tuple[int, int, int] = (255, 255, 255)
AFTER_COLOUR: tuple[int, int, int] = (0, 229, 255)
#: Tints of the parts the lesion grew into and receded from.
GROWN_COLOUR: tuple[int, int, int] = (230, 40, 40)
RECEDED_COLOUR: tuple[int, int, int] = (40, 110, 255)
#: Delta E shown at the top of the colour-change scale.
DELTA_E_SCALE: float = 30.0


def _require_aligned(result: Any) -> None:
    if not result.aligned or result.after_aligned is None:
        raise FollowUpError(f"no comparison picture: {result.reason or 'the photos could not be aligned'}")


def outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """``image`` with the outline of ``mask`` drawn on a copy.

    Args:
        image: HxWx3 uint8 RGB.
        mask: HxW bool region to outline.
        colour: RGB line colour.
        thickness: Line width in pixels.
    """
    import cv2

    out = np.ascontiguousarray(image, np.uint8).copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, thickness, lineType=cv2.LINE_AA)
    return out


def labelled(image: np.ndarray, label: str) -> np.ndarray:
    """``image`` under a white strip holding ``label`` in dark text.

    Args:
        image: HxWx3 uint8 RGB.
        label: Text of the strip (ASCII).
    """
    import cv2

    width = image.shape[1]
    scale = max(0.35, min(0.7, width / 700))
    height = int(28 * scale / 0.5)
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, label, (6, int(height * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale, (30, 30, 30), 1, cv2.LINE_AA)
    return np.vstack([strip, image])


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two same-height pictures with a white gap between them.

    Args:
        left: HxWx3 uint8 RGB.
        right: H'xW'x3 uint8 RGB.
        gap: Width of the white gap, pixels.
    """
    height = max(left.shape[0], right.shape[0])

    def pad(img: np.ndarray) -> np.ndarray:
        return np.pad(img, ((0, height - img.shape[0]), (0, 0), (0, 0)), constant_values=255)

    return np.hstack([pad(left), np.full((height, gap, 3), 255, np.uint8), pad(right)])


def outside_view(image: np.ndarray, common: np.ndarray) -> np.ndarray:
    """``image`` with what the other photo does not show dimmed to grey.

    Args:
        image: HxWx3 uint8 RGB in the baseline frame.
        common: HxW bool pixels both photos show.
    """
    out = image.copy()
    out[~common] = (out[~common] * 0.35 + 90).astype(np.uint8)
    return out


def comparison_image(result: Any) -> np.ndarray:
    """Baseline and aligned follow-up side by side, each lesion outlined (baseline white, follow-up cyan).

    Args:
        result: An aligned :class:`~backend.followup.change.FollowUpResult`.

    Raises:
        FollowUpError: The pair is not aligned.
    """
    _require_aligned(result)
    thickness = max(1, round(min(result.before.shape[:2]) / 250))
    before = outline(result.before, result.before_mask, BEFORE_COLOUR, thickness)
    after = outline(outside_view(result.after_aligned, result.common), result.after_mask, AFTER_COLOUR, thickness)
    return side_by_side(labelled(before, f"Baseline: {result.before_name}"),
                        labelled(after, f"Follow-up, aligned: {result.after_name}"))


def change_map_image(result: Any) -> np.ndarray:
    """Two panels over the baseline: where the outline moved (grown red, receded blue) and colour change.

    The colour-change panel shows the per-pixel delta E inside either lesion on the inferno scale,
    from 0 (black) to :data:`DELTA_E_SCALE` (pale yellow).

    Args:
        result: An aligned :class:`~backend.followup.change.FollowUpResult`.

    Raises:
        FollowUpError: The pair is not aligned.
    """
    import cv2

    _require_aligned(result)
    grey = cv2.cvtColor(cv2.cvtColor(result.before, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    base = (grey.astype(np.float32) * 0.6 + 40).astype(np.uint8)
    grown = result.after_mask & ~result.before_mask
    receded = result.before_mask & ~result.after_mask
    moved = base.astype(np.float32)
    for region, colour in ((grown, GROWN_COLOUR), (receded, RECEDED_COLOUR)):
        moved[region] = moved[region] * 0.35 + np.asarray(colour, np.float32) * 0.65
    thickness = max(1, round(min(base.shape[:2]) / 250))
    moved = outline(np.clip(moved, 0, 255).astype(np.uint8), result.before_mask, BEFORE_COLOUR, thickness)
    moved = outline(moved, result.after_mask, AFTER_COLOUR, thickness)

    union = result.before_mask | result.after_mask
    level = np.clip(result.change_map / DELTA_E_SCALE * 255, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    colour = base.copy()
    colour[union] = heat[union]
    colour = outline(colour, union, BEFORE_COLOUR, thickness)
    return side_by_side(labelled(moved, "Outline: grown red, receded blue"),
                        labelled(colour, f"Colour change: delta E 0 (black) - {DELTA_E_SCALE:.0f}+ (yellow)"))


def blend(before: np.ndarray, after: np.ndarray, amount: float) -> np.ndarray:
    """Cross-fade: ``amount`` 0 shows ``before``, 1 shows ``after`` (same-size RGB uint8).

    Args:
        before: Baseline picture.
        after: Aligned follow-up picture, same size.
        amount: Share of the follow-up, 0-1.
    """
    amount = float(np.clip(amount, 0.0, 1.0))
    mixed = before.astype(np.float32) * (1.0 - amount) + after.astype(np.float32) * amount
    return np.rint(mixed).astype(np.uint8)


def swipe(before: np.ndarray, after: np.ndarray, position: float) -> np.ndarray:
    """``before`` left of a vertical line at ``position`` (0-1 of the width), ``after`` right of it.

    Args:
        before: Baseline picture.
        after: Aligned follow-up picture, same size.
        position: Where the line is, 0 (left edge) to 1 (right edge).
    """
    width = before.shape[1]
    cut = round(float(np.clip(position, 0.0, 1.0)) * width)
    out = after.copy()
    out[:, :cut] = before[:, :cut]
    if 0 < cut < width:
        out[:, max(0, cut - 1) : cut + 1] = 255
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of an RGB uint8 array, written from the pixels alone (no EXIF, no text chunks).

    Args:
        image: HxWx3 uint8 RGB.
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
