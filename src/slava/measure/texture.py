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
    that of the rotation-invariant uniform patterns (``lbp_histogram``), in
    bits (0 for a flat image, ≤ log2(10)).
    """
    quantised = np.minimum((prep.flat * LEVELS).astype(np.uint8), LEVELS - 1)
    wide = quantised.astype(np.uint16)
    matrices = np.stack([cooccurrence(wide, d * dr, d * dc) for d in DISTANCES for dr, dc in DIRECTIONS])
    props = glcm_properties(matrices).mean(axis=1)
    hist = lbp_histogram(quantised)
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
    skimage's ``graycomatrix`` for the few offsets used here. ``quantised``
    is best given as uint16: the pair codes (``LEVELS``² < 2¹⁶) are then
    formed in two-byte integers, twice as fast as in the default int64.
    """
    h, w = quantised.shape
    a = quantised[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
    b = quantised[max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)]
    counts = np.bincount((a * LEVELS + b).ravel(), minlength=LEVELS * LEVELS).reshape(LEVELS, LEVELS)
    counts = counts + counts.T
    return counts / max(float(counts.sum()), 1.0)


def glcm_properties(p: np.ndarray) -> np.ndarray:
    """(contrast, homogeneity, energy, correlation) of normalised co-occurrence matrices, as skimage defines them.

    ``p`` is one matrix or a stack of them (``[..., LEVELS, LEVELS]``); the
    result has the four properties first, then the stack's shape.
    """
    i, j = np.indices(p.shape[-2:])
    diff2 = (i - j) ** 2
    mean_i, mean_j = (p * i).sum(axis=(-2, -1)), (p * j).sum(axis=(-2, -1))
    di, dj = i - mean_i[..., None, None], j - mean_j[..., None, None]
    std_i = np.sqrt((p * di**2).sum(axis=(-2, -1)))
    std_j = np.sqrt((p * dj**2).sum(axis=(-2, -1)))
    # A single grey level has no spread; skimage calls that perfectly correlated.
    flat = (std_i < 1e-15) | (std_j < 1e-15)
    correlation = np.where(flat, 1.0, (p * di * dj).sum(axis=(-2, -1)) / np.where(flat, 1.0, std_i * std_j))
    return np.array([(p * diff2).sum(axis=(-2, -1)), (p / (1.0 + diff2)).sum(axis=(-2, -1)),
                     np.sqrt((p**2).sum(axis=(-2, -1))), correlation])


def _uniform_codes() -> np.ndarray:
    """Uniform LBP label (0–9) of each of the 256 eight-bit neighbour patterns."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    transitions = (bits != np.roll(bits, 1, axis=1)).sum(axis=1)
    return np.where(transitions <= 2, bits.sum(axis=1), 9)


UNIFORM = _uniform_codes()
"""Pattern (bit k = k-th ring neighbour ≥ centre) → rotation-invariant uniform label."""
_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


def lbp_histogram(image: np.ndarray) -> np.ndarray:
    """Counts of the rotation-invariant uniform LBP labels (0–9) of ``image``, 8 square neighbours.

    A pattern with at most two 0/1 transitions around the ring gets its number
    of set bits (0–8); every other pattern gets 9. Square neighbours instead
    of skimage's interpolated circle make this ~6× faster on the same image,
    and counting the 256 raw patterns before folding them into labels spares
    a per-pixel label image.
    """
    return np.bincount(UNIFORM, weights=np.bincount(_patterns(image).ravel(), minlength=256), minlength=10)


def _patterns(image: np.ndarray) -> np.ndarray:
    """Eight-bit pattern per pixel: bit k set where ring neighbour k is at least the centre (edges repeated)."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    code = np.zeros((h, w), dtype=np.uint8)
    for k, (r, c) in enumerate(_RING):
        code |= (padded[r : r + h, c : c + w] >= image).view(np.uint8) << np.uint8(k)
    return code
