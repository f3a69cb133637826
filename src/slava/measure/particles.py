"""Particles: bright blobs on a darker substrate, counted and sized."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from slava.measure.prepare import Prepared, border_labels, equivalent_diameters, summary
from slava.measure.record import ParticleStats


def segment_particles(prep: Prepared) -> tuple[np.ndarray, int]:
    """Label image of particles (analysis pixels), touching particles split by watershed.

    Holes smaller than half a typical particle (bright rims around a darker
    core, common in SEM edge contrast) are filled. The watershed seeds are maxima of the distance
    transform at least half a typical radius apart; the typical radius is the
    median over components of their largest inscribed radius.
    """
    mask = prep.clean
    labels, n = ndi.label(mask)
    if n == 0:
        return labels, 0
    distance = prep.distance
    holes = ndi.binary_fill_holes(mask) & ~mask
    hole_labels, n_holes = ndi.label(holes)
    if n_holes:
        hole_areas = np.bincount(hole_labels.ravel())
        typical_area = float(np.median(np.bincount(labels.ravel())[1:]))
        fill = hole_areas < 0.5 * typical_area
        fill[0] = False
        if fill.any():
            mask = mask | fill[hole_labels]
            labels, n = ndi.label(mask)
            distance = ndi.distance_transform_edt(mask).astype(np.float32)

    # Each component's deepest point is one particle's inscribed radius even
    # when the component is a clump, so its median is a clump-proof size.
    deepest = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(deepest, labels.ravel(), distance.ravel())
    radius = float(np.median(deepest[1:]))
    # A peak must be clearly inside a particle: necks between touching
    # particles and thin rims are shallower than this.
    min_distance = max(2, int(round(0.6 * radius)))
    peaks = peak_local_max(
        ndi.gaussian_filter(distance, 1.0),
        min_distance=min_distance,
        threshold_abs=max(1.0, 0.35 * radius),
        exclude_border=False,
    )
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components without a peak (too thin for the threshold) keep their own seed.
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[labels[tuple(peaks.T)]] = True
    unseeded = ~seeded[labels] & mask
    extra, n_extra = ndi.label(unseeded)
    markers[extra > 0] = extra[extra > 0] + len(peaks)
    split = watershed(-distance, markers, mask=mask)
    return split, len(peaks) + n_extra


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
