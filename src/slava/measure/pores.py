"""Pores: dark openings in a bright matrix, and the ligaments between them."""

from __future__ import annotations

import numpy as np

from slava.measure.prepare import Prepared, border_labels, equivalent_diameters, summary
from slava.measure.record import PoreStats


def measure_pores(prep: Prepared, pixel_size_nm: float | None, notes: list[str]) -> PoreStats:
    """Pore fraction, count and sizes of the dark phase, and the matrix ligament width.

    The pore fraction is the dark share of the field (specks below the
    minimum object area are noise and count as the surrounding phase). Pore sizes are
    equivalent diameters of pores not cut by the image edge; ``count``
    includes the edge-cut ones. The ligament width is twice the distance
    transform of the bright matrix along its skeleton.
    """
    labels, n = prep.dark_labels
    fraction = float((labels > 0).mean())
    diameters = equivalent_diameters(labels, n) * prep.scale
    interior = np.ones(n, dtype=bool)
    interior[border_labels(labels) - 1] = False
    sizes_px = diameters[interior]
    unit = 1.0 if pixel_size_nm is None else pixel_size_nm
    mean, median, _ = summary(sizes_px * unit)
    ligament = None
    if prep.skeleton.any():
        ligament = float(np.mean(2.0 * prep.distance[prep.skeleton] - 0.5)) * prep.scale * unit
    if n and not interior.any():
        notes.append("pores: every pore touches the image edge (one connected network); no pore sizes")
    if fraction > 0.7:
        notes.append(f"pores: the dark phase covers {fraction:.0%}; the bright phase may be the minority, not a matrix")
    return PoreStats(
        pore_fraction=fraction,
        count=int(n),
        mean_pore_size=mean,
        median_pore_size=median,
        pore_sizes_px=[round(float(d), 2) for d in sizes_px],
        pore_sizes_nm=None if pixel_size_nm is None else [round(float(d) * pixel_size_nm, 2) for d in sizes_px],
        mean_ligament_width=ligament,
    )
