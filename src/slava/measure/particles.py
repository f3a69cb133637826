"""Particles: bright blobs on a darker substrate, counted and sized.

Counting and sizing are done by different tools, each where it is strong:
particles are *found* as scale-space maxima of the scale-normalised
Laplacian of Gaussian (LoG) at scales set by the image's own typical
particle radius, which separates touching particles and survives heavy
noise because the filter is matched to the particle size; they are *sized*
by a watershed of the bright phase seeded at those maxima.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.segmentation import watershed

from slava.measure.prepare import Prepared, border_labels, equivalent_diameters, noise_level, summary
from slava.measure.record import ParticleStats

DETECTION_SNR = 3.0
"""A blob must beat the filter's response to pure pixel noise by this many standard deviations."""


def radius_range(prep: Prepared) -> tuple[float, float]:
    """(small, large) particle radius (analysis px) from the components' largest inscribed radii.

    A component's deepest point is one particle's inscribed radius even when
    the component is a clump of touching particles, so these percentiles
    (median and 95th) are clump-proof scales for the LoG filters.
    """
    labels, n = ndi.label(prep.solid)
    if n == 0:
        return 0.0, 0.0
    # Only local maxima of the distance can be a component's deepest point:
    # reducing over those few pixels avoids a sort of the whole image.
    dist = prep.solid_distance
    top = (dist > 0) & (dist == ndi.maximum_filter(dist, size=3))
    deepest = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(deepest, labels[top], dist[top])
    deepest = deepest[1:]
    lo, hi = np.percentile(deepest, (50, 95))
    return float(lo), float(hi)


def _noise_response(sigma: float) -> float:
    """Standard deviation of −σ²∇²G applied to unit white noise (norm of the discrete kernel)."""
    half = int(np.ceil(3.0 * sigma)) + 2
    impulse = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float64)
    impulse[half, half] = 1.0
    kernel = sigma**2 * ndi.laplace(ndi.gaussian_filter(impulse, sigma, truncate=3.0))
    return float(np.sqrt((kernel**2).sum()))


def blob_centres(flat: np.ndarray, mask: np.ndarray, radii: tuple[float, float], noise: float) -> np.ndarray:
    """Centres (row, col) of bright blobs inside ``mask``: scale-space LoG maxima, overlaps pruned.

    The response at each pixel is the largest scale-normalised −σ²∇²G over
    scales √2 apart spanning the matched σ (radius / √2) of the small and
    large particles; a big particle peaks at its centre at a large σ, far
    above the rim response of the small σ. A maximum counts when it beats
    the filter's response to the image's pixel noise (``noise``) by
    ``DETECTION_SNR`` standard deviations. Small scales of 2 px and more run
    on a block-averaged copy (a blob of that size loses nothing). A maximum
    within the matched radius (√2 σ) of a stronger one is the same blob.
    """
    # Half a step below the median catches the smaller particles of a spread.
    lo, hi = 0.7 * max(radii[0], 1.0) / np.sqrt(2.0), max(radii[1], radii[0], 1.0) / np.sqrt(2.0)
    sigmas = lo * np.sqrt(2.0) ** np.arange(0, 1 + int(np.ceil(2.0 * np.log2(max(hi / lo, 1.0)))))
    factor = max(1, int(sigmas[0] // 2))
    image = flat if factor == 1 else flat[: flat.shape[0] // factor * factor, : flat.shape[1] // factor * factor]
    if factor > 1:
        image = image.reshape(image.shape[0] // factor, factor, image.shape[1] // factor, factor).mean(axis=(1, 3))
    best = np.full(image.shape, -np.inf, dtype=np.float32)
    best_sigma = np.zeros(image.shape, dtype=np.float32)
    # Block averaging by ``factor`` divides the noise by ``factor``.
    noise = noise / factor
    for sigma in sigmas / factor:
        response = -sigma**2 * ndi.laplace(ndi.gaussian_filter(image, sigma, truncate=3.0))
        response -= DETECTION_SNR * noise * _noise_response(sigma)
        better = response > best
        best[better] = response[better]
        best_sigma[better] = sigma
    size = max(3, 2 * int(round(0.7 * sigmas[0] / factor)) + 1)
    peaks = np.argwhere((best == ndi.maximum_filter(best, size=size)) & (best > 0))
    if factor > 1:
        peaks = np.minimum(peaks * factor + factor // 2, np.array(mask.shape) - 1)
    peaks = peaks[mask[tuple(peaks.T)]]
    if len(peaks) < 2:
        return peaks
    strength = best[tuple((peaks // factor).T)] if factor > 1 else best[tuple(peaks.T)]
    reach = np.sqrt(2.0) * factor * best_sigma[tuple((peaks // factor).T)]
    order = np.argsort(-strength)
    peaks, reach = peaks[order], reach[order]
    keep = np.ones(len(peaks), dtype=bool)
    pairs = cKDTree(peaks).query_pairs(float(1.5 * reach.max()), output_type="ndarray")
    if len(pairs):
        # Index order is strength order, so the smaller index of a pair is the stronger peak.
        pairs = np.sort(pairs, axis=1)
        i, j = pairs[:, 0], pairs[:, 1]
        overlap = np.hypot(*(peaks[i] - peaks[j]).T) < reach[i] + 0.5 * reach[j]
        for a, b in pairs[overlap][np.lexsort((pairs[overlap][:, 1], pairs[overlap][:, 0]))]:
            if keep[a]:
                keep[b] = False
    return peaks[keep]


def segment_particles(prep: Prepared) -> tuple[np.ndarray, int]:
    """Label image of particles (analysis pixels), one label per LoG blob.

    Components holding several blob centres are split by a watershed of
    their distance transform seeded at those centres; components without a
    centre (too faint or too thin for the blob filter) keep their own label.
    """
    mask = prep.solid
    labels, n = ndi.label(mask)
    if n == 0:
        return labels, 0
    # Filled cores of edge-bright particles take the bright level, so the LoG
    # sees a blob instead of a ring (whose rim would give several maxima).
    image = prep.flat
    cores = mask & ~prep.clean
    if cores.any():
        image = image.copy()
        image[cores] = float(np.mean(prep.flat[prep.clean]))
    centres = blob_centres(image, mask, radius_range(prep), noise_level(prep.flat))
    per_component = np.bincount(labels[tuple(centres.T)], minlength=n + 1)
    clumps = per_component >= 2
    clumps[0] = False
    out = labels.copy()
    count = n
    if clumps.any():
        in_clump = clumps[labels]
        inside = centres[in_clump[tuple(centres.T)]]
        markers = np.zeros(labels.shape, dtype=np.int32)
        markers[tuple(inside.T)] = np.arange(n + 1, n + 1 + len(inside))
        split = watershed(-prep.solid_distance, markers, mask=in_clump)
        out[in_clump] = split[in_clump]
        # Relabel to 1..k so label ids index sizes directly.
        used = np.unique(out)
        used = used[used > 0]
        lut = np.zeros(int(out.max()) + 1, dtype=np.int32)
        lut[used] = np.arange(1, len(used) + 1)
        out = lut[out]
        count = len(used)
    return out, count


def measure_particles(prep: Prepared, pixel_size_nm: float | None, notes: list[str]) -> ParticleStats:
    """Count and size the particles entirely inside the field.

    Particles cut by the image edge have unknown size and are left out of
    ``count`` and the sizes (as in the synthetic ground truth);
    ``border_count`` says how many there are.
    """
    labels, n = segment_particles(prep)
    coverage = float((labels > 0).mean())
    diameters = equivalent_diameters(labels, n) * prep.scale
    edge = border_labels(labels)
    interior = np.ones(n, dtype=bool)
    interior[edge - 1] = False
    sizes_px = diameters[interior]
    sizes_nm = None if pixel_size_nm is None else sizes_px * pixel_size_nm
    mean, median, std = summary(sizes_px if sizes_nm is None else sizes_nm)
    if n and not interior.any():
        notes.append("particles: every object touches the image edge; none counted or sized")
    elif len(edge) > 0.5 * n:
        notes.append(f"particles: {len(edge)} of {n} objects touch the image edge and are not counted")
    if coverage > 0.6:
        notes.append(f"particles: the bright phase covers {coverage:.0%}; this may be a film, not particles")
    return ParticleStats(
        count=int(interior.sum()),
        diameters_px=[round(float(d), 2) for d in sizes_px],
        diameters_nm=None if sizes_nm is None else [round(float(d), 2) for d in sizes_nm],
        mean_diameter=mean,
        median_diameter=median,
        std_diameter=std,
        coverage=coverage,
        border_count=int(len(edge)),
    )
