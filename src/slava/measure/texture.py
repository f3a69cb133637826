"""Texture: grey-level statistics, co-occurrence (GLCM) properties and LBP entropy."""

from __future__ import annotations

import numpy as np
from slava.measure.prepare import Prepared
from slava.measure.record import TextureStats

LEVELS = 32
"""Grey levels of the co-occurrence matrix: enough to tell textures apart, few enough to be fast."""
DISTANCES = (1, 2)
"""Pixel offsets of the co-occurrences: the fine structure that tells textures apart lives at 1–2 px."""
DIRECTIONS = ((0, 1), (-1, 1), (-1, 0), (-1, -1))
"""(row, col) steps at 0°, 45°, 90° and 135°."""


def measure_texture(pixels: np.ndarray, prep: Prepared) -> TextureStats:
    """Texture features of one micrograph.

    Mean and standard deviation come from the micrograph's own grey values
    (0–1). GLCM and LBP use the flattened, contrast-stretched analysis image,
    so they describe structure rather than brightness or shading; GLCM
    properties are averaged over ``DISTANCES`` × ``DIRECTIONS``. LBP entropy is
    that of the rotation-invariant uniform patterns (``uniform_lbp``), in
    bits (0 for a flat image, ≤ log2(10)).
    """
    quantised = np.minimum((prep.flat * LEVELS).astype(np.uint8), LEVELS - 1)
    props = np.mean([glcm_properties(cooccurrence(quantised, d * dr, d * dc))
                     for d in DISTANCES for dr, dc in DIRECTIONS], axis=0)
    hist = np.bincount(uniform_lbp(quantised).ravel(), minlength=10).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return TextureStats(
        mean_intensity=float(np.mean(pixels)),
        std_intensity=float(np.std(pixels)),
        glcm_contrast=float(props[0]),
        glcm_homogeneity=float(props[1]),
        glcm_energy=float(props[2]),
        glcm_correlation=float(props[3]),
        lbp_entropy=float(-(p * np.log2(p)).sum()),
    )


def cooccurrence(quantised: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrix (``LEVELS``²) for one pixel offset.

    One ``bincount`` over the pixel pairs: several times faster than
    skimage's ``graycomatrix`` for the few offsets used here.
    """
    h, w = quantised.shape
    a = quantised[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)].astype(np.int64)
    b = quantised[max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)].astype(np.int64)
    counts = np.bincount((a * LEVELS + b).ravel(), minlength=LEVELS * LEVELS).reshape(LEVELS, LEVELS)
    counts = counts + counts.T
    return counts / max(float(counts.sum()), 1.0)


def glcm_properties(p: np.ndarray) -> np.ndarray:
    """(contrast, homogeneity, energy, correlation) of a normalised co-occurrence matrix, as skimage defines them."""
    i, j = np.indices(p.shape)
    diff2 = (i - j) ** 2
    mean_i, mean_j = (p * i).sum(), (p * j).sum()
    std_i = np.sqrt((p * (i - mean_i) ** 2).sum())
    std_j = np.sqrt((p * (j - mean_j) ** 2).sum())
    # A single grey level has no spread; skimage calls that perfectly correlated.
    correlation = 1.0
    if std_i >= 1e-15 and std_j >= 1e-15:
        correlation = float((p * (i - mean_i) * (j - mean_j)).sum() / (std_i * std_j))
    return np.array([(p * diff2).sum(), (p / (1.0 + diff2)).sum(), np.sqrt((p**2).sum()), correlation])


def uniform_lbp(image: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform LBP codes (0–9) with the 8 square neighbours.

    A pattern with at most two 0/1 transitions around the ring gets its number
    of set bits (0–8); every other pattern gets 9. Square neighbours instead
    of skimage's interpolated circle make this ~6× faster on the same image.
    """
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
    bits = np.stack([padded[r : r + h, c : c + w] >= image for r, c in ring])
    transitions = (bits != np.roll(bits, 1, axis=0)).sum(axis=0)
    ones = bits.sum(axis=0)
    return np.where(transitions <= 2, ones, 9).astype(np.int64)
