"""Measuring the scale bar inside a data bar, and reading its label when tesseract is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slava.io.databar import dominant_value
from slava.io.tiff_meta import unit_to_nm

# Foreground (bar, text) differs from the band background by at least this much.
CONTRAST = 0.5
# Runs this long are frame or separator lines, not a scale bar.
MAX_RUN_FRACTION = 0.7
# End ticks of an "I"-shaped bar rise this many rows beyond the bar itself.
TICK_EXTRA_ROWS = 3

_LABEL = re.compile(r"(\d+(?:[.,]\d+)?)\s*(nm|µm|μm|um|mm|pm|Å|A)\b")


@dataclass
class ScaleBar:
    """A scale bar: length in pixels (between end-tick centres when it has ticks) and its box."""

    length_px: float
    box: tuple[int, int, int, int]


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate(([False], row, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _column_extent(fg: np.ndarray, col: int, rows: range) -> int:
    """Foreground rows connected vertically to the bar in column ``col``."""
    top, bottom = rows.start, rows.stop
    while top > 0 and fg[top - 1, col]:
        top -= 1
    while bottom < fg.shape[0] and fg[bottom, col]:
        bottom += 1
    return bottom - top


def _tick_centre(fg: np.ndarray, cols: range, rows: range, limit: int) -> float | None:
    ticks = [c for c in cols if _column_extent(fg, c, rows) > limit]
    return float(np.mean(ticks)) if ticks else None


def find_scale_bar(pixels: np.ndarray, bar_box: tuple[int, int, int, int]) -> ScaleBar | None:
    """The scale bar in ``bar_box`` of ``pixels``: the longest thin horizontal run of
    pixels that contrast with the band background; None if there is none."""
    x0, y0, x1, y1 = bar_box
    region = pixels[y0:y1, x0:x1]
    if region.size == 0:
        return None
    fg = np.abs(region - dominant_value(region)) > CONTRAST
    width = region.shape[1]
    min_len = max(8, int(0.02 * width))
    best: tuple[int, int, int] | None = None  # (row, start, stop)
    for r in range(region.shape[0]):
        for start, stop in _runs(fg[r]):
            length = stop - start
            if min_len <= length < MAX_RUN_FRACTION * width and (best is None or length > best[2] - best[1]):
                best = (r, start, stop)
    if best is None:
        return None
    r, start, stop = best

    # Thickness: neighbouring rows with the same run (±1 px at each end).
    def same_run(row: int) -> bool:
        return any(abs(s - start) <= 1 and abs(e - stop) <= 1 for s, e in _runs(fg[row]))

    top, bottom = r, r + 1
    while top > 0 and same_run(top - 1):
        top -= 1
    while bottom < region.shape[0] and same_run(bottom):
        bottom += 1
    rows = range(top, bottom)
    thickness = bottom - top

    length = float(stop - start)
    end_cols = max(2, thickness)
    limit = thickness + TICK_EXTRA_ROWS
    left = _tick_centre(fg, range(start, min(stop, start + end_cols)), rows, limit)
    right = _tick_centre(fg, range(max(start, stop - end_cols), stop), rows, limit)
    if left is not None and right is not None:
        length = right - left
    return ScaleBar(length_px=length, box=(x0 + start, y0 + top, x0 + stop, y0 + bottom))


def parse_scale_label(text: str) -> float | None:
    """The first length with a unit in ``text`` ("200 nm", "1.5 µm") as nm, or None."""
    match = _LABEL.search(text)
    if not match:
        return None
    return unit_to_nm(float(match.group(1).replace(",", ".")), match.group(2))


def read_scale_label_nm(pixels: np.ndarray, bar: ScaleBar, bar_box: tuple[int, int, int, int]) -> float | None:
    """The scale bar's label read with the ``tesseract`` program; None when it is not
    installed or reads nothing usable. The label sits above, below or beside the bar."""
    exe = shutil.which("tesseract")
    if exe is None:
        return None
    from PIL import Image

    bx0, by0, bx1, by1 = bar.box
    span = bx1 - bx0
    crop = pixels[bar_box[1] : bar_box[3], max(0, bx0 - span) : min(pixels.shape[1], bx1 + span)]
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "label.png"
        Image.fromarray((crop * 255).astype(np.uint8)).resize((crop.shape[1] * 3, crop.shape[0] * 3)).save(image_path)
        try:
            out = subprocess.run(
                [exe, str(image_path), "stdout", "--psm", "6"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    return parse_scale_label(out.stdout)
