"""Measuring the scale bar inside a data bar (its label is read by ``slava.io.readbar``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def _row_runs(fg: np.ndarray, min_len: int) -> list[list[tuple[int, int]]]:
    """Per row of ``fg``, its foreground runs (start, stop) at least ``min_len`` long, shorter than a
    frame line and touching neither side edge."""
    h, width = fg.shape
    padded = np.zeros((h, width + 2), dtype=np.int8)
    padded[:, 1:-1] = fg
    step = np.diff(padded, axis=1)
    # Row-major order pairs each row's starts with its stops.
    rows, starts = np.nonzero(step == 1)
    stops = np.nonzero(step == -1)[1]
    length = stops - starts
    keep = (length >= min_len) & (length < MAX_RUN_FRACTION * width) & (starts > 0) & (stops < width)
    runs: list[list[tuple[int, int]]] = [[] for _ in range(h)]
    for r, a, b in zip(rows[keep].tolist(), starts[keep].tolist(), stops[keep].tolist()):
        runs[r].append((a, b))
    return runs


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


def _segments(fg: np.ndarray, min_len: int) -> list[tuple[int, int, int, int]]:
    """Thin horizontal strokes (top, bottom, start, stop) in ``fg``: a run of foreground repeated
    (±1 px at each end) over consecutive rows, clear of the band's edges.

    A run touching the left or right edge, or a stroke on the band's first or
    last row, is a frame or table line, not a scale bar.
    """
    h, width = fg.shape
    runs = _row_runs(fg, min_len)
    segments = []
    for r in range(h):
        for start, stop in runs[r]:
            if r > 0 and any(abs(a - start) <= 1 and abs(b - stop) <= 1 for a, b in runs[r - 1]):
                continue  # not the stroke's first row
            bottom = r + 1
            while bottom < h and any(abs(a - start) <= 1 and abs(b - stop) <= 1 for a, b in runs[bottom]):
                bottom += 1
            if r == 0 or bottom == h:
                continue
            inner = slice(start + (stop - start) // 4, stop - (stop - start) // 4)
            # A stroke with text or lines hugging it over its middle is part of a glyph or a box.
            if fg[r - 1, inner].mean() > 0.3 or fg[bottom, inner].mean() > 0.3:
                continue
            segments.append((r, bottom, start, stop))
    return segments


def _merge_halves(segments: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """FEI/Thermo bars are drawn as two strokes with the label between them: join strokes on the
    same rows whose gap is shorter than the strokes together."""
    merged = list(segments)
    for i, (t1, b1, s1, e1) in enumerate(segments):
        for t2, b2, s2, e2 in segments[i + 1 :]:
            if abs(t1 - t2) <= 1 and abs(b1 - b2) <= 1 and (e1 < s2 or e2 < s1):
                lo, hi = (s1, e2) if e1 < s2 else (s2, e1)
                gap = (s2 - e1) if e1 < s2 else (s1 - e2)
                if gap < (e1 - s1) + (e2 - s2) and abs((e1 - s1) - (e2 - s2)) <= 0.25 * max(e1 - s1, e2 - s2):
                    merged.append((min(t1, t2), max(b1, b2), lo, hi))
    return merged


def find_scale_bar(pixels: np.ndarray, bar_box: tuple[int, int, int, int]) -> ScaleBar | None:
    """The scale bar in ``bar_box`` of ``pixels``: the longest thin horizontal stroke (or pair of
    strokes around a label) that contrasts with the band background; None if there is none."""
    x0, y0, x1, y1 = bar_box
    region = pixels[y0:y1, x0:x1]
    if region.size == 0 or min(region.shape) < 3:
        return None
    fg = np.abs(region - dominant_value(region)) > CONTRAST
    min_len = max(8, int(0.02 * max(region.shape[1], region.shape[0])))
    segments = _merge_halves(_segments(fg, min_len))
    if not segments:
        return None
    top, bottom, start, stop = max(segments, key=lambda s: (s[3] - s[2], -s[0]))
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
