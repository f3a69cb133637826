"""Finding the instrument data bar: the band of text and scale bar under most SEM images.

The band is found from row statistics, bottom up. Its rows are mostly one
exact background value (instruments draw it, so it carries no noise) with
sparse high-contrast text; it spans the full width; and its top edge is sharp:
the first band rows are nearly pure background while the image row above is not.
Noisy image rows almost never have a third of their pixels within a few grey
levels of one value, which keeps textures such as NEU steel surfaces uncropped.
"""

from __future__ import annotations

import numpy as np

# Grey-level tolerance (of the [0, 1] range) around the band's background value.
TOL = 0.04
# Drawn background is exact; image noise near that value is not.
EXACT = 0.004
NOISY_NEAR = 0.25
PURE_STD = 0.015
# Padding rows are mostly exact background even after JPEG; flat textures are not.
MIN_EXACT = 0.6
# A band row has at least this share of background pixels (text rows dip to ~0.5).
MIN_ROW_BACKGROUND = 0.35
# The rows at the top of the band, under its edge, are padding: nearly all background.
MIN_EDGE_BACKGROUND = 0.9
# The band is searched for in the bottom part of the image only.
MAX_BAR_FRACTION = 0.35
# Frame lines or a stray row of the image under the band (as in Zeiss files).
MAX_BOTTOM_SKIP = 3
# Solid separator lines drawn above the band belong to it.
MAX_SEPARATOR_ROWS = 3
# A separator row is drawn: nearly all its pixels within 0.02 of one value,
# which differs from the image row above it.
SEPARATOR_UNIFORM = 0.95
SEPARATOR_CONTRAST = 0.15
# Text or a scale bar: pixels this far from the background.
CONTENT_CONTRAST = 0.3


def dominant_value(values: np.ndarray) -> float:
    """The most common grey value (64 bins), refined to the median of its bin."""
    flat = values.ravel()
    counts, edges = np.histogram(flat, bins=64, range=(0.0, 1.0))
    k = int(np.argmax(counts))
    inside = flat[(flat >= edges[k]) & (flat <= edges[k + 1])]
    return float(np.median(inside)) if inside.size else float(edges[k])


def _separator_rows(pixels: np.ndarray, band_top: int) -> int:
    """How many solid separator-line rows sit directly above row ``band_top``."""
    level = None
    rows = 0
    while rows < MAX_SEPARATOR_ROWS and band_top - rows - 1 > 0:
        row = pixels[band_top - rows - 1]
        median = float(np.median(row))
        if (np.abs(row - median) <= 0.02).mean() < SEPARATOR_UNIFORM or (level is not None and abs(median - level) > 0.02):
            break
        level = median if level is None else level
        rows += 1
    # A smooth image region is uniform too; a drawn line stands out from the image above it.
    if rows and abs(float(np.median(pixels[band_top - rows - 1])) - level) > SEPARATOR_CONTRAST:
        return rows
    return 0


def _band_top(region: np.ndarray, background: float, share: np.ndarray, start: int, end: int) -> int | None:
    """Top row of the band among bar-like rows ``start..end`` of ``region``, or None.

    The band starts with padding rows that are nearly pure background. Above it
    lies either a row that is not bar-like at all, or (when the image is flat
    near the band's value) a row whose pixels are near the background but not
    exactly on it: image noise. The topmost such edge wins; a flat region that
    runs to the top of the search window with no edge is image, not a band.
    """
    offset = np.abs(region - background)
    exact = (offset <= EXACT).mean(axis=1)
    near = offset <= TOL
    # Spread of the near-background pixels only: frame lines and text do not count.
    spread = np.sqrt((np.where(near, offset, 0.0) ** 2).sum(axis=1) / np.maximum(near.sum(axis=1), 1))
    pure = (share >= MIN_EDGE_BACKGROUND) & (spread <= PURE_STD) & (exact >= MIN_EXACT)
    for y in range(start, end - 1):
        if not (pure[y] and pure[y + 1]):
            continue
        if y == start and y > 0:
            return y
        if y > start and share[y - 1] - exact[y - 1] >= NOISY_NEAR:
            return y
    return None


def find_data_bar(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box (x0, y0, x1, y1) of the data bar at the bottom of ``pixels`` ([H, W] in [0, 1]), or None."""
    h, w = pixels.shape
    if h < 32 or w < 32:
        return None
    top = int(h * (1 - MAX_BAR_FRACTION))
    region = pixels[top:]
    background = dominant_value(pixels[h - max(4, h // 50) :])
    share = (np.abs(region - background) <= TOL).mean(axis=1)
    bar_row = share >= MIN_ROW_BACKGROUND

    end = len(share)
    skipped = 0
    while end > 0 and not bar_row[end - 1] and skipped < MAX_BOTTOM_SKIP:
        end -= 1
        skipped += 1
    start = end
    while start > 0 and bar_row[start - 1]:
        start -= 1
    start = _band_top(region, background, share, start, end)
    if start is None or end - start < max(6, int(0.03 * h)):
        return None
    band = region[start:end]
    content = np.abs(band - background) > CONTENT_CONTRAST
    if content.mean() < 0.002 or np.count_nonzero(content.any(axis=1)) < 2:
        return None

    y0 = top + start - _separator_rows(pixels, top + start)
    return (0, y0, w, h)
