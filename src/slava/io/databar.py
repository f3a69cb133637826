"""Finding the instrument data bar: the band of text and scale bar an SEM draws beside the image.

Instruments put it in different places: a band along the bottom edge (FEI,
Thermo, most Zeiss files), a band a little above the bottom edge with image
rows under it (Zeiss and JEOL screen captures), a band along the top, or a
side panel (TESCAN, Hitachi captures). Every place is searched with the one
bottom-band test below, on the image turned so the place becomes its bottom
edge; a band with image under it is found by first finding its lower edge.

The band is found from row statistics, bottom up, and works for both
polarities (light text on black, dark text on white) and for JPEG copies. Its
rows are mostly one background value with sparse high-contrast text: an
instrument draws the band, so it carries no noise, and even after JPEG its
background pixels stay within a few grey levels of that value (the median
offset of a row, a robust spread that text cannot move, stays tiny). The band
spans the full width, and its top edge is sharp: the first band rows are
nearly pure background while the image row above is not. Noisy image rows
almost never hold most of their pixels within a few grey levels of one value,
which keeps textures such as NEU steel surfaces uncropped.
"""

from __future__ import annotations

import numpy as np

# Grey-level tolerance (of the [0, 1] range) around the band's background
# value: wide enough for JPEG ringing beside text.
TOL = 0.05
# Padding pixels of a JPEG-compressed band stay this close to the background.
TIGHT = 0.03
# Median offset from the background of a padding row: JPEG noise of a flat
# band, not image noise.
MAX_PAD_SPREAD = 0.025
# A band row has at least this share of background pixels (text rows dip to ~0.5).
MIN_ROW_BACKGROUND = 0.35
# The rows at the top of the band, under its edge, are padding: nearly all
# background, and most of it tight even where JPEG rings beside the edge.
MIN_EDGE_BACKGROUND = 0.8
MIN_EDGE_TIGHT = 0.55
# The image row above the band's edge has at least this much smaller a share
# of tight background pixels than the band's first row: a visible step, not a
# flat image or texture running into the band.
MIN_STEP = 0.3
# Under a sheer edge (the row above holds almost no band-coloured pixels),
# JPEG rings a few rows into the band; its padding then only has to be
# mostly background with a moderate spread.
SHEER_ABOVE = 0.1
MIN_RINGING_BACKGROUND = 0.75
MAX_RINGING_SPREAD = 0.035
# The band is searched for in the bottom part of the image only.
MAX_BAR_FRACTION = 0.35
# Frame lines or a stray row of the image under the band (as in Zeiss files).
MAX_BOTTOM_SKIP = 3
# Solid separator lines drawn above the band belong to it.
MAX_SEPARATOR_ROWS = 3
# A separator row is drawn: nearly all its pixels within SEPARATOR_TOL of one
# value, which differs from the image row above it.
SEPARATOR_TOL = 0.05
SEPARATOR_UNIFORM = 0.9
SEPARATOR_CONTRAST = 0.15
# Text or a scale bar: pixels this far from the background.
CONTENT_CONTRAST = 0.3


def _dominant_bins(rows: np.ndarray) -> np.ndarray:
    """Index of each row's most common bin of the 64 of [0, 1] (the last one closed, as np.histogram's)."""
    n = rows.shape[0]
    inside = (rows >= 0) & (rows <= 1)
    # int32 codes: a third of int64's conversion time on a wide band.
    codes = np.minimum(np.where(inside, rows * 64, 0).astype(np.int32), 63) + (64 * np.arange(n, dtype=np.int32))[:, None]
    counts = np.bincount(codes.ravel() if inside.all() else codes[inside], minlength=64 * n).reshape(n, 64)
    return counts.argmax(axis=1)


def dominant_values(rows: np.ndarray) -> np.ndarray:
    """``dominant_value`` of each row of ``rows`` [N, W], in one pass (no Python loop over rows)."""
    rows = np.asarray(rows)
    k = _dominant_bins(rows)
    lo_edge, hi_edge = (k / 64).astype(rows.dtype), ((k + 1) / 64).astype(rows.dtype)
    # The bin's values are one contiguous stretch of each sorted row: its middle is their median.
    ordered = np.sort(rows, axis=1)
    start = (ordered < lo_edge[:, None]).sum(axis=1)
    count = (ordered <= hi_edge[:, None]).sum(axis=1) - start
    r = np.arange(rows.shape[0])
    low = ordered[r, np.minimum(start + np.maximum(count - 1, 0) // 2, rows.shape[1] - 1)]
    high = ordered[r, np.minimum(start + count // 2, rows.shape[1] - 1)]
    middle = (low + high) / np.asarray(2, dtype=ordered.dtype)
    return np.where(count > 0, middle, lo_edge).astype(np.float64)


def dominant_value(values: np.ndarray) -> float:
    """The most common grey value (64 bins), refined to the median of its bin."""
    flat = np.asarray(values).ravel()
    # One array needs no sort (``dominant_values``' way for many rows): the median of its bin's values.
    k = int(_dominant_bins(flat[None])[0])
    inside = flat[(flat >= k / 64) & (flat <= (k + 1) / 64)]
    return float(np.median(inside)) if inside.size else k / 64


def _separator_rows(pixels: np.ndarray, band_top: int) -> int:
    """How many solid separator-line rows sit directly above row ``band_top``."""
    level = None
    rows = 0
    while rows < MAX_SEPARATOR_ROWS and band_top - rows - 1 > 0:
        row = pixels[band_top - rows - 1]
        median = float(np.median(row))
        uniform = (np.abs(row - median) <= SEPARATOR_TOL).mean() >= SEPARATOR_UNIFORM
        if not uniform or (level is not None and abs(median - level) > SEPARATOR_TOL):
            break
        level = median if level is None else level
        rows += 1
    # A smooth image region is uniform too; a drawn line stands out from the image above it.
    if rows and abs(float(np.median(pixels[band_top - rows - 1])) - level) > SEPARATOR_CONTRAST:
        return rows
    return 0


def _bottom_band(pixels: np.ndarray) -> int | None:
    """First row of a data band along the bottom edge of ``pixels`` ([H, W] in [0, 1]), or None."""
    h, w = pixels.shape
    if h < 32 or w < 32:
        return None
    top = int(h * (1 - MAX_BAR_FRACTION))
    region = pixels[top:]
    background = dominant_value(pixels[h - max(4, h // 50) :])
    offset = np.abs(region - background)
    share = (offset <= TOL).mean(axis=1)
    tight = (offset <= TIGHT).mean(axis=1)
    # The median is the costly statistic: only rows that could pass as padding need it.
    spread = np.full(len(share), np.inf, dtype=np.float32)
    mostly = share >= min(MIN_EDGE_BACKGROUND, MIN_RINGING_BACKGROUND)
    if mostly.any():
        spread[mostly] = np.median(offset[mostly], axis=1)
    bar_row = share >= MIN_ROW_BACKGROUND
    pure = (share >= MIN_EDGE_BACKGROUND) & (tight >= MIN_EDGE_TIGHT) & (spread <= MAX_PAD_SPREAD)
    ringing = (share >= MIN_RINGING_BACKGROUND) & (spread <= MAX_RINGING_SPREAD)

    end = len(share)
    skipped = 0
    while end > 0 and not bar_row[end - 1] and skipped < MAX_BOTTOM_SKIP:
        end -= 1
        skipped += 1
    start = end
    while start > 0 and bar_row[start - 1]:
        start -= 1
    # The band opens with padding rows under a visible step; a flat image that
    # runs into the band with no step leaves the band's top unknown.
    def edge(y: int) -> bool:
        if y == 0:
            return False
        if share[y - 1] <= SHEER_ABOVE and ringing[y] and ringing[y + 1]:
            return True
        return bool(pure[y] and pure[y + 1] and tight[y - 1] <= tight[y] - MIN_STEP)

    start = next((y for y in range(start, end - 1) if edge(y)), None)
    if start is None or end - start < max(6, int(0.03 * h)):
        return None
    band = region[start:end]
    content = np.abs(band - background) > CONTENT_CONTRAST
    if content.mean() < 0.002 or np.count_nonzero(content.any(axis=1)) < 2:
        return None

    return top + start - _separator_rows(pixels, top + start)


def _lower_edges(pixels: np.ndarray) -> list[int]:
    """Rows in the bottom part of ``pixels`` where band-like padding stops over image rows.

    A band's padding rows hold nearly all their pixels within ``TIGHT`` of
    one value; the first image row under it holds far fewer near that value.
    Up to ``MAX_SEPARATOR_ROWS`` uniform frame-line rows between the two
    belong to the band. Returned strongest step first, at most four.
    """
    h = pixels.shape[0]
    top = int(h * (1 - MAX_BAR_FRACTION))
    ys = np.arange(max(top, 2), h - 2)
    if ys.size == 0:
        return []
    values = dominant_values(pixels[ys - 1])
    above = np.abs(np.stack([pixels[ys - 2], pixels[ys - 1]], axis=1) - values[:, None, None].astype(pixels.dtype))
    padding = ((above <= TIGHT).mean(axis=(1, 2)) >= MIN_EDGE_BACKGROUND) & (
        np.median(above.reshape(len(ys), -1), axis=1) <= MAX_PAD_SPREAD)
    steps: list[tuple[float, int]] = []
    for i in np.flatnonzero(padding):
        y, value = int(ys[i]), float(values[i])
        end = y
        while end < min(h - 1, y + MAX_SEPARATOR_ROWS):
            row = pixels[end]
            if (np.abs(row - np.median(row)) <= SEPARATOR_TOL).mean() < SEPARATOR_UNIFORM:
                break
            end += 1
        below = float((np.abs(pixels[end] - value) <= TIGHT).mean())
        step = float((above[i, -1] <= TIGHT).mean()) - below
        if step >= MIN_STEP and end < h - 1:
            steps.append((step, end))
    steps.sort(reverse=True)
    return [end for _, end in steps[:4]]


def find_data_bar(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box (x0, y0, x1, y1) of the instrument data bar in ``pixels`` ([H, W] in [0, 1]), or None.

    Searched in the order instruments use: along the bottom edge, as a
    full-width band above the bottom edge with image rows under it, along
    the top edge, then as a side panel on the right or the left.
    """
    h, w = pixels.shape
    y0 = _bottom_band(pixels)
    if y0 is not None:
        return (0, y0, w, h)
    for end in _lower_edges(pixels):
        y0 = _bottom_band(pixels[:end])
        # The band must leave image rows under it (else it is a bottom band).
        if y0 is not None and h - end >= 2:
            return (0, y0, w, end)
    y0 = _bottom_band(pixels[::-1])
    if y0 is not None:
        return (0, 0, w, h - y0)
    x0 = _bottom_band(pixels.T)
    if x0 is not None:
        return (x0, 0, w, h)
    x0 = _bottom_band(pixels.T[::-1])
    if x0 is not None:
        return (0, 0, w - x0, h)
    return None


def image_box(shape: tuple[int, int], bar: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """The largest rectangle of ``shape`` (H, W) that holds no data-bar pixel, as (x0, y0, x1, y1).

    A bar along an edge is cropped away whole. A band with image rows on
    both sides keeps the full frame: its rows are masked instead
    (``Micrograph.masked``), so no image content is lost.
    """
    h, w = shape
    if bar is None:
        return (0, 0, w, h)
    x0, y0, x1, y1 = bar
    if (x0, x1) == (0, w):
        if y1 == h:
            return (0, 0, w, y0)
        if y0 == 0:
            return (0, y1, w, h)
        return (0, 0, w, h)
    if x1 == w:
        return (0, 0, x0, h)
    return (x1, 0, w, h)
