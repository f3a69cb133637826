"""Compact particles on a textured support, found by their contrast with their surroundings across scales.

HAADF-STEM and bright-field TEM of catalysts show small particles sitting on
a support grain that is itself brighter (or darker) than the vacuum. A global
threshold takes the whole grain as one object, so the particles have to be
found as local extremes instead: at each scale σ the centre-surround contrast
(a Gaussian of σ minus one of 2√2 σ) must be large twice over,

- against the grey spread inside the surround (``LOCAL_CONTRAST``): the
  support's own texture there, so a rough grain does not shed false blobs;
- against the field's typical contrast at that scale, the robust spread of
  the same filter over the whole image (``FIELD_CONTRAST``): a blob must
  stand out from the run of the field, not only from a flat patch;

and it must beat the filter's response to the pixel noise alone by
``NOISE_CONTRAST`` standard deviations, and be round (``EDGE_RATIO``): on a
clean, flat field the first two limits would pass noise specks and the rims
of large objects.

The polarity is the one whose strongest blobs stand out most: bright
particles in HAADF-STEM, dark ones in bright-field TEM. Both limits were
chosen on half of ``real-sem/stem-nanoparticles`` and checked on the other
half (``bench/bench_real_measure.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

LOCAL_CONTRAST = 0.6
"""Centre-surround contrast over the surround's grey spread that a blob must beat."""
FIELD_CONTRAST = 4.0
"""Centre-surround contrast over its robust spread across the field that a blob must beat."""
SURROUND_STEPS = 3
"""The surround's sigma in √2 scale steps above the centre's (2√2 σ), so the surround of one scale is the centre of another."""
SMALLEST_SIGMA = 1.2
"""Smallest centre sigma (px): a blob about 3.4 px across, the least a particle can be and still be told from noise."""
LARGEST_FRACTION = 1.0 / 32.0
"""Largest centre sigma as a share of the long side: bigger objects are not particles on a support."""
POLARITY_BLOBS = 20
"""The strongest blobs of each polarity that decide which polarity the particles have."""
NOISE_CONTRAST = 5.0
"""Centre-surround contrast over its standard deviation for pure pixel noise that a blob must beat."""
NOISE_GAIN = 0.2327
"""Standard deviation of the centre-surround filter's response to unit white noise, times the centre sigma:
√(1/4π + 1/32π − 1/9π) for a surround of 2√2 σ."""
EDGE_RATIO = 3.0
"""Largest ratio of a blob's principal curvatures: above it the extreme is a ridge or an edge, not a particle (as in SIFT)."""
SPREAD_FLOOR = 0.02
"""Grey spread (of the [0, 1] field) below which the surround counts as flat: noise-free patches do not divide by zero."""


@dataclass(frozen=True)
class Blobs:
    """Blobs found in one analysis image: centres (row, col), radii (px), contrast and surround grey, strongest first."""

    centres: np.ndarray
    radii: np.ndarray
    contrast: np.ndarray
    surround: np.ndarray
    """Grey level around each blob (its surround Gaussian at the centre)."""
    polarity: int
    """+1: brighter than their surroundings; −1: darker."""


def find_blobs(flat: np.ndarray, noise: float) -> Blobs:
    """Particles in ``flat`` (a flattened [0, 1] grey image, pixel noise ``noise``) that stand out from their surroundings.

    Each blob's radius is √2 σ at the scale where its local contrast peaks,
    refined between the neighbouring scales by a parabola in log σ. A blob
    within 1.5 radii of a stronger one is the same particle.
    """
    image = np.asarray(flat, dtype=np.float32)
    top = max(SMALLEST_SIGMA, LARGEST_FRACTION * max(image.shape))
    steps = 1 + SURROUND_STEPS + int(np.floor(2.0 * np.log2(top / SMALLEST_SIGMA)))
    sigmas = SMALLEST_SIGMA * np.sqrt(2.0) ** np.arange(steps)
    centre, square = _gaussian_stack(image, sigmas)
    n = len(sigmas) - SURROUND_STEPS
    around, around_square = centre[SURROUND_STEPS:], square[SURROUND_STEPS:]
    difference = centre[:n] - around
    local = difference / (np.sqrt(np.maximum(around_square - around**2, 0.0)) + SPREAD_FLOOR)
    flat_difference = difference.reshape(n, -1)
    middle = np.median(flat_difference, axis=1)
    spread = 1.4826 * np.median(np.abs(flat_difference - middle[:, None]), axis=1) + 1e-6
    field = difference / spread[:, None, None]
    # A response the pixel noise could give counts as no contrast at all.
    floor = (NOISE_CONTRAST * NOISE_GAIN * noise / sigmas[:n])[:, None, None]
    field = np.where(np.abs(difference) > floor, field, 0.0)
    candidates = {sign: _peaks(sign * local, sign * field, centre, sigmas[:n]) for sign in (1, -1)}
    strength = {sign: float(np.sort(c[2])[-POLARITY_BLOBS:].sum()) for sign, c in candidates.items()}
    polarity = max(strength, key=strength.get)
    centres, radii, contrast, surround = candidates[polarity]
    return Blobs(centres=centres, radii=radii, contrast=contrast, surround=surround, polarity=polarity)


def blob_labels(image: np.ndarray, blobs: Blobs) -> tuple[np.ndarray, int]:
    """A label image of the blobs: each is the part of it beyond half-way from its surround to its peak.

    The half-maximum outline sizes a particle better than the filter's
    scale, which comes in √2 steps and shrinks for flat-topped particles.
    A blob's outline is its connected region within two radii of its
    centre; stronger blobs claim pixels first, and a blob whose region is
    lost to them keeps the disc of its radius where still free.
    """
    smooth = blobs.polarity * ndi.gaussian_filter(np.asarray(image, dtype=np.float32), 1.0)
    labels = np.zeros(smooth.shape, dtype=np.int32)
    h, w = smooth.shape
    for k, ((r, c), radius) in enumerate(zip(blobs.centres.tolist(), blobs.radii.tolist())):
        reach = int(np.ceil(2.0 * radius))
        box = (slice(max(0, r - reach), min(h, r + reach + 1)), slice(max(0, c - reach), min(w, c + reach + 1)))
        rows, cols = np.ogrid[box[0].start - r : box[0].stop - r, box[1].start - c : box[1].stop - c]
        distance = rows * rows + cols * cols
        patch, free = smooth[box], labels[box] == 0
        peak = float(patch[distance <= radius * radius].max())
        above = (patch >= 0.5 * (peak + blobs.polarity * float(blobs.surround[k]))) & (distance <= reach * reach) & free
        parts, _ = ndi.label(above)
        own = parts[r - box[0].start, c - box[1].start]
        region = parts == own if own else (distance <= radius * radius) & free
        labels[box][region] = k + 1
    return labels, len(blobs.radii)


def _gaussian_stack(image: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blurs of ``image`` and of its square at every sigma, from one Fourier transform of each."""
    h, w = image.shape
    # The widest Gaussian reaches 3σ: padding that far keeps the transform's wrap-around off the image.
    pad = int(np.ceil(3.0 * sigmas[-1])) + 1
    shape = (fft.next_fast_len(h + 2 * pad, real=True), fft.next_fast_len(w + 2 * pad, real=True))
    ky = (2.0 * np.pi * np.fft.fftfreq(shape[0])).astype(np.float32) ** 2
    kx = (2.0 * np.pi * np.fft.rfftfreq(shape[1])).astype(np.float32) ** 2
    out = []
    for x in (image, image * image):
        spectrum = fft.rfft2(np.pad(x, pad, mode="symmetric"), s=shape)
        out.append(np.stack([
            fft.irfft2(spectrum * np.multiply.outer(np.exp(-0.5 * s * s * ky), np.exp(-0.5 * s * s * kx)), s=shape)[pad : pad + h, pad : pad + w]
            for s in sigmas.tolist()
        ]))
    return out[0], out[1]


def _round(blurred: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Whether each (scale, row, col) extreme of ``blurred`` curves alike in every direction, within ``EDGE_RATIO``."""
    scale, rows, cols = found.T
    h, w = blurred.shape[1:]
    up, down = np.maximum(rows - 1, 0), np.minimum(rows + 1, h - 1)
    left, right = np.maximum(cols - 1, 0), np.minimum(cols + 1, w - 1)
    at = blurred[scale, rows, cols]
    dyy = blurred[scale, up, cols] + blurred[scale, down, cols] - 2.0 * at
    dxx = blurred[scale, rows, left] + blurred[scale, rows, right] - 2.0 * at
    dxy = 0.25 * (blurred[scale, down, right] + blurred[scale, up, left] - blurred[scale, up, right] - blurred[scale, down, left])
    det = dxx * dyy - dxy * dxy
    return (det > 0) & ((dxx + dyy) ** 2 < (EDGE_RATIO + 1.0) ** 2 / EDGE_RATIO * det)


def _peaks(local: np.ndarray, field: np.ndarray, blurred: np.ndarray,
           sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale-space maxima of ``local`` that pass both limits and are round, at their best scale, overlaps pruned.

    ``blurred`` holds the image's Gaussian blurs at ``sigmas`` and
    ``SURROUND_STEPS`` scales beyond: its Hessian at a maximum's scale tells a round blob from
    a ridge or an edge, and its surround scale gives the grey around the
    blob. Returns (centres, radii, contrast, surround grey).
    """
    best = local.argmax(axis=0)
    top = (local == ndi.maximum_filter(local, size=3, mode="nearest")) & (local > LOCAL_CONTRAST) & (field > FIELD_CONTRAST)
    found = np.argwhere(top)
    found = found[best[found[:, 1], found[:, 2]] == found[:, 0]]
    found = found[_round(blurred, found)]
    scale, rows, cols = found.T
    contrast = local[scale, rows, cols]
    # A parabola through the neighbouring scales places the peak between the √2 steps.
    below = local[np.maximum(scale - 1, 0), rows, cols]
    above = local[np.minimum(scale + 1, len(sigmas) - 1), rows, cols]
    curvature = below - 2.0 * contrast + above
    shift = np.where(curvature < 0, 0.5 * (below - above) / np.where(curvature < 0, curvature, -1.0), 0.0)
    radii = np.sqrt(2.0) * sigmas[scale] * np.sqrt(2.0) ** np.clip(shift, -0.5, 0.5)
    surround = blurred[scale + SURROUND_STEPS, rows, cols]
    order = np.argsort(-contrast, kind="stable")
    centres, radii, contrast, surround = found[order, 1:], radii[order], contrast[order], surround[order]
    keep = np.ones(len(centres), dtype=bool)
    if len(centres) > 1:
        tree = cKDTree(centres)
        for k in range(len(centres)):
            if keep[k]:
                near = np.asarray(tree.query_ball_point(centres[k], 1.5 * radii[k]), dtype=np.intp)
                keep[near[near > k]] = False
    return centres[keep], radii[keep], contrast[keep], surround[keep]
