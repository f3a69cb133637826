"""Particles: bright blobs on a darker substrate, counted and sized.

Particles are the bright phase split by a watershed of its distance
transform. The seeds come from the tool that is reliable at each clump's
scale: distance-transform peaks for particles much wider than the
denoising blur (any convex-ish shape, angular powder grains included),
scale-space maxima of the Laplacian of Gaussian (LoG) for small particles
in heavy noise, where the blur has filled the necks between them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.segmentation import watershed

from slava.measure.prepare import Prepared, border_labels, equivalent_diameters, summary
from slava.measure.record import ParticleStats

DETECTION_SNR = 3.0
"""A blob must beat the filter's response to pure pixel noise by this many standard deviations."""
NECK_RADIUS_IN_BLURS = 6.0
"""Inscribed radius, in denoising-blur sigmas, below which the blur may have filled a clump's necks."""
CONVEX_SOLIDITY = 0.95
"""A watershed region less convex than this (area / convex-hull area) may be several particles."""


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
    strength = best[tuple((peaks // factor).T)]
    reach = np.sqrt(2.0) * factor * best_sigma[tuple((peaks // factor).T)]
    if len(peaks) < 2:
        return peaks
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
    """Label image of particles (analysis pixels), touching particles split by watershed.

    A first watershed of the distance transform, seeded at its peaks, cuts
    clumps at their necks; a particle of any convex shape, an angular grain
    included, keeps one region. A region that is non-convex (solidity under
    ``CONVEX_SOLIDITY``) and narrow (inscribed radius under
    ``NECK_RADIUS_IN_BLURS`` denoising-blur sigmas) may be several small
    particles packed in noise whose necks the blur filled; it is re-seeded
    at its LoG blob centres, which are matched to the particle size, when it
    holds two or more. Regions without a seed keep one label.
    """
    mask = prep.solid
    labels, n = ndi.label(mask)
    if n == 0:
        return labels, 0
    distance = prep.solid_distance
    deepest = _deepest(labels, n, distance)
    seeds = _distance_peaks(distance, labels, float(np.median(deepest)))
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    # Components without a peak (too thin for its depth threshold) keep their own seed.
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[labels[tuple(seeds.T)]] = True
    extra = np.where(~seeded[labels] & mask, labels + len(seeds), 0)
    markers = np.maximum(markers, extra)
    regions = watershed(-distance, markers, mask=mask)
    regions, count = _relabel(regions)
    centres = _blob_centres_of(prep, deepest)
    per_region = np.bincount(regions[tuple(centres.T)], minlength=count + 1)
    crowded = np.flatnonzero(per_region >= 2)
    crowded = crowded[crowded > 0]
    if len(crowded) == 0:
        return regions, count
    # Only particles a few blurs wide can have had their necks filled; a
    # wider non-convex region is one irregular particle (a powder grain).
    blur = prep.blur
    props = regionprops(np.where(np.isin(regions, crowded), regions, 0), intensity_image=distance)
    loose = np.zeros(count + 1, dtype=bool)
    loose[[p.label for p in props
           if p.intensity_max < NECK_RADIUS_IN_BLURS * blur and p.solidity < CONVEX_SOLIDITY]] = True
    if not loose.any():
        return regions, count
    inside = centres[loose[regions[tuple(centres.T)]]]
    markers = np.where(loose[regions], 0, regions)
    markers[tuple(inside.T)] = np.arange(count + 1, count + 1 + len(inside))
    split = watershed(-distance, markers, mask=mask)
    return _relabel(split)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..k so label ids index per-particle arrays directly."""
    used = np.unique(labels)
    used = used[used > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[labels], len(used)


def _deepest(labels: np.ndarray, n: int, distance: np.ndarray) -> np.ndarray:
    """Each component's largest inscribed radius (its deepest distance-transform value)."""
    # Only local maxima of the distance can be a component's deepest point:
    # reducing over those few pixels avoids a pass over every pixel.
    top = (distance > 0) & (distance == ndi.maximum_filter(distance, size=3))
    deepest = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(deepest, labels[top], distance[top])
    return deepest[1:]


def _blob_centres_of(prep: Prepared, deepest: np.ndarray) -> np.ndarray:
    """LoG blob centres in the bright phase, at scales from the components' inscribed radii.

    A component's deepest point is one particle's inscribed radius even when
    the component is a clump, so the median and 95th percentile over
    components are clump-proof small and large radii.
    """
    # Filled cores of edge-bright particles take the bright level, so the LoG
    # sees a blob instead of a ring (whose rim would give several maxima).
    image = prep.flat
    cores = prep.solid & ~prep.clean
    if cores.any():
        image = image.copy()
        image[cores] = float(np.mean(prep.flat[prep.clean]))
    lo, hi = np.percentile(deepest, (50, 95))
    return blob_centres(image, prep.solid, (float(lo), float(hi)), prep.noise)


def _distance_peaks(distance: np.ndarray, labels: np.ndarray, radius: float) -> np.ndarray:
    """Peaks of the (lightly smoothed) distance transform: one per particle of typical radius ``radius``.

    A peak must be clearly inside a particle (deeper than a third of the
    typical radius: necks and thin rims are shallower) and at least 0.6 of
    that radius (Chebyshev) from a higher one in the same component.
    Equivalent to skimage's ``peak_local_max(labels=...)`` but in one pass
    over the image instead of one per component, which dominated the cost
    of busy fields.
    """
    reach = max(2, int(round(0.6 * radius)))
    depth = ndi.gaussian_filter(distance, 1.0)
    # Outside the particles is lowest so no peak looks across the background,
    # as skimage's per-component masking does.
    depth = np.where(labels > 0, depth, -np.inf).astype(np.float32)
    top = (depth == ndi.maximum_filter(depth, size=2 * reach + 1, mode="nearest")) & (depth > max(1.0, 0.35 * radius))
    peaks = np.argwhere(top)
    if len(peaks) < 2:
        return peaks
    peaks = peaks[np.argsort(-depth[tuple(peaks.T)], kind="stable")]
    pairs = cKDTree(peaks).query_pairs(reach, p=np.inf, output_type="ndarray")
    if len(pairs) == 0:
        return peaks
    owner = labels[tuple(peaks.T)]
    pairs = np.sort(pairs[owner[pairs[:, 0]] == owner[pairs[:, 1]]], axis=1)
    # ``query_pairs`` includes pairs exactly ``reach`` apart, which skimage keeps.
    pairs = pairs[np.abs(peaks[pairs[:, 0]] - peaks[pairs[:, 1]]).max(axis=1) < reach]
    keep = np.ones(len(peaks), dtype=bool)
    # Pair order by (stronger, weaker) index is strength order: a peak only suppresses while kept.
    for a, b in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
        if keep[a]:
            keep[b] = False
    return peaks[keep]


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
