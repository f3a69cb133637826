"""Texture: grey-level statistics, co-occurrence (GLCM) properties and LBP entropy."""

from __future__ import annotations

import numpy as np
from skimage.feature import graycomatrix, graycoprops

from slava.measure.prepare import Prepared
from slava.measure.record import TextureStats

LEVELS = 32
"""Grey levels of the co-occurrence matrix: enough to tell textures apart, few enough to be fast."""
DISTANCES = (1, 2, 4)
ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def measure_texture(pixels: np.ndarray, prep: Prepared) -> TextureStats:
    """Texture features of one micrograph.

    Mean and standard deviation come from the micrograph's own grey values
    (0–1). GLCM and LBP use the flattened, contrast-stretched analysis image,
    so they describe structure rather than brightness or shading; GLCM
    properties are averaged over ``DISTANCES`` × ``ANGLES``. LBP entropy is
    that of the rotation-invariant uniform patterns (``uniform_lbp``), in
    bits (0 for a flat image, ≤ log2(10)).
    """
    quantised = np.minimum((prep.flat * LEVELS).astype(np.uint8), LEVELS - 1)
    glcm = graycomatrix(quantised, DISTANCES, ANGLES, levels=LEVELS, symmetric=True, normed=True)
    props = {name: float(np.mean(graycoprops(glcm, name))) for name in
             ("contrast", "homogeneity", "energy", "correlation")}
    hist = np.bincount(uniform_lbp(quantised).ravel(), minlength=10).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return TextureStats(
        mean_intensity=float(np.mean(pixels)),
        std_intensity=float(np.std(pixels)),
        glcm_contrast=props["contrast"],
        glcm_homogeneity=props["homogeneity"],
        glcm_energy=props["energy"],
        glcm_correlation=props["correlation"],
        lbp_entropy=float(-(p * np.log2(p)).sum()),
    )


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
