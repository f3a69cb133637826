"""Particles: blobs that stand out from a substrate or a support, counted and sized.

On a plain substrate, particles are the bright phase split by a watershed
of its distance transform. The seeds come from the tool that is reliable at each clump's
scale: distance-transform peaks for particles much wider than the
denoising blur (any convex-ish shape, angular powder grains included),
scale-space maxima of the Laplacian of Gaussian (LoG) for small particles
in heavy noise, where the blur has filled the necks between them.

Particles on a support (catalysts in HAADF-STEM or bright-field TEM) are
found by their local contrast instead (``slava.measure.blobs``): there the
threshold takes each support grain whole, or, for dark particles, the
vacuum around it.
"""

from __future__ import annotations

import numpy as np
from scipy import fft
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from slava.measure.blobs import blob_labels, find_blobs
from slava.measure.prepare import Prepared, border_labels, equivalent_diameters, summary
from slava.measure.record import ParticleStats

DETECTION_SNR = 3.0
"""A blob must beat the filter's response to pure pixel noise by this many standard deviations."""
NECK_RADIUS_IN_BLURS = 6.0
"""Inscribed radius, in denoising-blur sigmas, below which the blur may have filled a clump's necks."""
CONVEX_SOLIDITY = 0.95
"""A watershed region less convex than this (area / convex-hull area) may be several particles."""
SUPPORT_BLOBS = 20
"""Fewest dark local-contrast blobs that make a field of dark particles. The bright-field TEM images of
``real-sem`` show 96 or more; a porous film shows a few round pores (10 in the Zeiss nanoporous gold)."""
FILM_COVERAGE = 0.6
"""A bright phase covering more of the field than this is a film, a support or the vacuum, not particles."""
PARTICLE_METHODS = ("auto", "threshold", "contrast")
"""How particles are found: see ``segment_particles``."""


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

    All scales come from one Fourier transform of the (reflect-padded)
    image: each is a product with the LoG's transfer function and an
    inverse transform, cheaper than blurring and differencing in space. The
    transfer is the 5-point Laplacian's times the Gaussian's, so the
    response matches the spatial filters; its norm over the spectrum is the
    response's standard deviation for unit white noise.
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
    # The widest Gaussian reaches 3σ: padding that far keeps the transform's wrap-around off the image.
    pad = int(np.ceil(3.0 * sigmas[-1] / factor)) + 1
    h, w = image.shape
    shape = (fft.next_fast_len(h + 2 * pad, real=True), fft.next_fast_len(w + 2 * pad, real=True))
    spectrum = fft.rfft2(np.pad(image, pad, mode="symmetric"), s=shape)
    ky = (2.0 * np.pi * np.fft.fftfreq(shape[0])).astype(np.float32)
    kx = (2.0 * np.pi * np.fft.rfftfreq(shape[1])).astype(np.float32)
    # The transfer −σ²(Ly + Lx)·gy·gx is built from 1-D factors, and so is
    # its norm. Columns of the half spectrum stand for two frequencies,
    # except the zero and Nyquist ones.
    ly, lx = 2.0 * np.cos(ky) - 2.0, 2.0 * np.cos(kx) - 2.0
    twice = np.full(kx.shape, 2.0, dtype=np.float32)
    twice[0] = 1.0
    if shape[1] % 2 == 0:
        twice[-1] = 1.0
    # σ as Python floats: a NumPy float64 scalar would promote every float32 product below to float64.
    first = float(sigmas[0]) / factor
    gy, gx = np.exp(-0.5 * first**2 * ky**2), np.exp(-0.5 * first**2 * kx**2)
    for sigma in (sigmas / factor).tolist():
        transfer = np.multiply.outer(ly * gy, -(sigma**2) * gx)
        transfer += np.multiply.outer(gy, -(sigma**2) * lx * gx)
        response = fft.irfft2(spectrum * transfer, s=shape)[pad : pad + h, pad : pad + w]
        gy2, gx2 = gy**2, twice * gx**2
        power = ((gy2 * ly**2).sum() * gx2.sum() + 2.0 * (gy2 * ly).sum() * (gx2 * lx).sum()
                 + gy2.sum() * (gx2 * lx**2).sum())
        spread = sigma**2 * float(np.sqrt(power / (shape[0] * shape[1])))
        response -= DETECTION_SNR * noise * spread
        better = response > best
        np.copyto(best, response, where=better)
        np.copyto(best_sigma, sigma, where=better)
        # A √2 step doubles σ²: the next scale's Gaussian is this one squared.
        gy, gx = gy * gy, gx * gx
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


def segment_particles(prep: Prepared, method: str = "auto") -> tuple[np.ndarray, int, str]:
    """Label image of particles (analysis pixels), their number, and the method that found them.

    ``method`` is one of ``PARTICLE_METHODS``. "threshold" splits the bright
    phase; "contrast" takes the blobs of ``slava.measure.blobs`` (particles
    on a support, as in HAADF-STEM of catalysts); "auto" takes the blobs
    when at least ``SUPPORT_BLOBS`` of them are dark and the bright phase
    covers over ``FILM_COVERAGE`` of the field (bright-field TEM: the bright
    phase is the vacuum or the film around them), and the bright phase
    otherwise. Bright particles on a bright support are not told apart from
    edge-bright SEM particles automatically: ask for "contrast". The method
    returned is "threshold" or "contrast".
    """
    if method not in PARTICLE_METHODS:
        raise ValueError(f"unknown particle method {method!r}; choose from {', '.join(PARTICLE_METHODS)}")
    # Only a field the bright phase mostly covers can hold dark particles: the others skip the blob search.
    if method == "threshold" or (method == "auto" and prep.clean.mean() <= FILM_COVERAGE):
        return (*_split_bright_phase(prep), "threshold")
    blobs = find_blobs(prep.flat, prep.noise)
    if method == "contrast" or (blobs.polarity < 0 and len(blobs.radii) >= SUPPORT_BLOBS):
        return (*blob_labels(prep.flat, blobs), "contrast")
    return (*_split_bright_phase(prep), "threshold")


def _split_bright_phase(prep: Prepared) -> tuple[np.ndarray, int]:
    """Label image of the bright phase's particles (analysis pixels), touching particles split by watershed.

    A first watershed of the distance transform, seeded at its peaks, cuts
    clumps at their necks; a particle of any convex shape, an angular grain
    included, keeps one region. A region that is narrow (inscribed radius
    under ``NECK_RADIUS_IN_BLURS`` denoising-blur sigmas) and non-convex
    (solidity under ``CONVEX_SOLIDITY``) may be several small particles
    packed in noise whose necks the blur filled; it is re-seeded at its LoG
    blob centres, which are matched to the particle size, when it holds two
    or more. Regions without a seed keep one label.

    Each step runs only where it can change something: the watershed on the
    components with several peaks, the LoG on a crop around the narrow
    regions, the convex hulls on the narrow regions holding several blobs
    and the second watershed on the regions it re-seeds.
    """
    mask = prep.solid
    labels, n = ndi.label(mask)
    if n == 0:
        return labels, 0
    distance = prep.solid_distance
    deepest = _deepest(labels, n, distance)
    seeds = _distance_peaks(distance, labels, float(np.median(deepest)))
    regions, count = _flood(labels, n, distance, seeds)
    # Only particles a few blurs wide can have had their necks filled; a
    # wider non-convex region is one irregular particle (a powder grain).
    narrow = np.r_[False, _deepest(regions, count, distance) < NECK_RADIUS_IN_BLURS * prep.blur]
    if not narrow.any():
        return regions, count
    centres = _blob_centres_of(prep, deepest, narrow[regions])
    per_region = np.bincount(regions[tuple(centres.T)], minlength=count + 1)
    crowded = np.flatnonzero(narrow & (per_region >= 2))
    if len(crowded) == 0:
        return regions, count
    boxes = ndi.find_objects(regions)
    loose = np.zeros(count + 1, dtype=bool)
    loose[[label for label in crowded if _non_convex(regions[boxes[label - 1]] == label)]] = True
    if not loose.any():
        return regions, count
    inside = centres[loose[regions[tuple(centres.T)]]]
    split = regions.copy()
    split[loose[regions]] = 0
    split[tuple(inside.T)] = np.arange(count + 1, count + 1 + len(inside))
    # Only the re-seeded pixels are flooded, and only the neighbouring
    # regions' pixels touching them can claim some: the rest of those
    # regions would just fill the watershed's queue.
    box = _box(loose[regions], margin=1)
    flood = loose[regions[box]]
    rim = ndi.binary_dilation(flood) & ~flood & mask[box]
    grown = watershed(-distance[box], np.where(flood | rim, split[box], 0), mask=flood | rim)
    split[box] = np.where(flood, grown, split[box])
    return _relabel(split)


def _outline_directions(reach: int = 3) -> np.ndarray:
    """Primitive (row, col) directions up to ``reach`` steps, diagonals left out, in angular order."""
    steps = [(p, q) for p in range(-reach, reach + 1) for q in range(-reach, reach + 1)
             if abs(p) != abs(q) and np.gcd(p, q) == 1]
    return np.array(sorted(steps, key=lambda d: np.arctan2(d[1], d[0])))


_DIRECTIONS = _outline_directions()
"""Directions whose extreme pixel corners outline a region from inside its convex hull."""
_MAJOR = np.abs(_DIRECTIONS[:, 0]) > np.abs(_DIRECTIONS[:, 1])
# The pixel corner (skimage's hull runs through edge midpoints) farthest along each direction.
_CORNER = 0.5 * np.stack([np.where(_MAJOR, np.sign(_DIRECTIONS[:, 0]), 0), np.where(_MAJOR, 0, np.sign(_DIRECTIONS[:, 1]))])


def _non_convex(image: np.ndarray) -> bool:
    """Whether a region's solidity (area / convex-hull area, as skimage counts it) is under ``CONVEX_SOLIDITY``.

    skimage's hull runs through the midpoints of the region's pixel edges.
    The polygon through the farthest of those along ``_DIRECTIONS`` lies
    inside the hull, so the area over the pixel centres inside that polygon
    bounds the solidity from above. Most clumps of particles fall below the
    limit on that bound alone; only the rest pay for skimage's exact hull,
    several times slower.
    """
    rows, cols = np.nonzero(image)
    extreme = (_DIRECTIONS @ np.stack([rows, cols])).argmax(axis=1)
    vr, vc = rows[extreme] + _CORNER[0], cols[extreme] + _CORNER[1]
    er, ec = np.roll(vr, -1) - vr, np.roll(vc, -1) - vc
    gr, gc = np.indices(image.shape).reshape(2, -1)
    # Vertices run counter-clockwise in (row, col): the inside is left of every edge (or on it).
    left = er[:, None] * (gc - vc[:, None]) - ec[:, None] * (gr - vr[:, None]) >= -1e-9
    area = len(rows)
    if area < CONVEX_SOLIDITY * left.all(axis=0).sum():
        return True
    return area < CONVEX_SOLIDITY * int(convex_hull_image(image).sum())


def _flood(labels: np.ndarray, n: int, distance: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, int]:
    """Watershed of −distance from ``seeds`` within the components of ``labels``, renumbered 1..k.

    A component with one seed or none is one particle as it stands; only
    those with several are flooded, on a crop around them.
    """
    per_component = np.bincount(labels[tuple(seeds.T)], minlength=n + 1)
    clump = per_component >= 2
    clump[0] = False
    if not clump.any():
        return labels, n
    seeds = seeds[clump[labels[tuple(seeds.T)]]]
    flood = clump[labels]
    box = _box(flood)
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers[tuple(seeds.T)] = np.arange(n + 1, n + 1 + len(seeds))
    # Whole components as markers would only fill the watershed's queue: they are merged back after.
    grown = watershed(-distance[box], markers[box], mask=flood[box])
    markers = labels.copy()
    markers[box] = np.where(flood[box], grown, labels[box])
    return _relabel(markers)


def _box(where: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """The bounding box of the True pixels of a non-empty mask, grown by ``margin`` within the image."""
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    return (slice(max(0, rows[0] - margin), rows[-1] + 1 + margin),
            slice(max(0, cols[0] - margin), cols[-1] + 1 + margin))


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..k so label ids index per-particle arrays directly."""
    used = np.flatnonzero(np.bincount(labels.ravel()))
    used = used[used > 0]
    lut = np.zeros(int(used[-1]) + 1 if len(used) else 1, dtype=np.int32)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[labels], len(used)


def _deepest(labels: np.ndarray, n: int, distance: np.ndarray) -> np.ndarray:
    """Each label's largest inscribed radius (its deepest distance-transform value), for labels 1..n."""
    inside = labels > 0
    deepest = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(deepest, labels[inside], distance[inside])
    return deepest[1:]


def _blob_centres_of(prep: Prepared, deepest: np.ndarray, near: np.ndarray) -> np.ndarray:
    """LoG blob centres in the bright phase within ``near``, at scales from the components' inscribed radii.

    A component's deepest point is one particle's inscribed radius even when
    the component is a clump, so the median and 95th percentile over
    components are clump-proof small and large radii. The LoG runs on a crop
    around ``near`` wide enough for its largest kernel.
    """
    lo, hi = np.percentile(deepest, (50, 95))
    box = _box(near, margin=int(np.ceil(3.0 * max(float(hi), 1.0))) + 2)
    # Filled cores of edge-bright particles take the bright level, so the LoG
    # sees a blob instead of a ring (whose rim would give several maxima).
    image = prep.flat[box]
    cores = prep.solid[box] & ~prep.clean[box]
    if cores.any():
        image = image.copy()
        image[cores] = float(np.mean(prep.flat[prep.clean]))
    centres = blob_centres(image, prep.solid[box], (float(lo), float(hi)), prep.noise)
    centres = centres + np.array([box[0].start, box[1].start])
    return centres[near[tuple(centres.T)]]


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


def measure_particles(prep: Prepared, pixel_size_nm: float | None, notes: list[str],
                      method: str = "auto") -> ParticleStats:
    """Count and size the particles entirely inside the field, found by ``method`` (see ``segment_particles``).

    Particles cut by the image edge have unknown size and are left out of
    ``count`` and the sizes (as in the synthetic ground truth);
    ``border_count`` says how many there are.
    """
    labels, n, found_by = segment_particles(prep, method)
    if found_by == "contrast" and method == "auto":
        notes.append("particles: dark particles on a bright field (bright-field TEM?): found by their local contrast")
    edge = border_labels(labels)
    if prep.invalid is not None:
        # The masked band cuts particles as the image edge does.
        cut = np.unique(labels[ndi.binary_dilation(prep.invalid)])
        edge = np.union1d(edge, cut[cut > 0])
        labels = np.where(prep.invalid, 0, labels)
    coverage = float((labels > 0).mean()) if prep.invalid is None else float((labels > 0)[~prep.invalid].mean())
    diameters = equivalent_diameters(labels, n) * prep.scale
    interior = np.ones(n, dtype=bool)
    interior[edge - 1] = False
    sizes_px = diameters[interior]
    sizes_nm = None if pixel_size_nm is None else sizes_px * pixel_size_nm
    mean, median, std = summary(sizes_px if sizes_nm is None else sizes_nm)
    if n and not interior.any():
        notes.append("particles: every object touches the image edge; none counted or sized")
    elif len(edge) > 0.5 * n:
        notes.append(f"particles: {len(edge)} of {n} objects touch the image edge and are not counted")
    if coverage > FILM_COVERAGE:
        notes.append(f"particles: the bright phase covers {coverage:.0%}; this may be a film, not particles")
    if len(sizes_px) >= 3 and float(np.median(sizes_px)) < 4.0:
        notes.append(f"particles: unreliable: median diameter {float(np.median(sizes_px)):.1f} px is under 4 px; "
                     "image at a higher magnification")
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    if n and areas.max() > 0.4 * labels.size:
        notes.append(f"particles: unreliable: one object fills {areas.max() / labels.size:.0%} of the field")
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
