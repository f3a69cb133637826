"""Fibres and wires: bright ridges, their widths, number, orientation and length."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import skeletonize

from slava.measure.prepare import Prepared, min_object_area, remove_specks, summary
from slava.measure.record import FibreStats

_EIGHT = np.ones((3, 3), dtype=bool)
STRAIGHT_COS = np.cos(np.deg2rad(150.0))
"""Two segments leaving a junction this close to opposite directions are one fibre crossing it."""


def ridge_filter(image: np.ndarray, sigmas: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale Hessian ridge strength for bright ridges, and the ridge direction.

    Strength is the scale-normalised magnitude of the most negative Hessian
    eigenvalue (as in Sato's filter), maximised over ``sigmas``. The direction
    is the along-ridge eigenvector angle in radians, measured in (row, col)
    coordinates from the row axis, at the winning scale.
    """
    strength = np.zeros(image.shape, dtype=np.float32)
    angle = np.zeros(image.shape, dtype=np.float32)
    for sigma in sigmas:
        # Finite differences of one blurred copy: a third of the cost of
        # three derivative-of-Gaussian filters, and the same at sigma ≥ 1.
        blurred = ndi.gaussian_filter(image, sigma, truncate=3.0)
        dr, dc = np.gradient(blurred)
        hrr = np.gradient(dr, axis=0) * sigma**2
        hrc = np.gradient(dr, axis=1) * sigma**2
        hcc = np.gradient(dc, axis=1) * sigma**2
        root = np.sqrt((hrr - hcc) ** 2 + 4.0 * hrc**2)
        response = np.maximum(-(hrr + hcc - root) / 2.0, 0.0)
        better = response > strength
        strength[better] = response[better]
        # The larger eigenvalue's eigenvector runs along a bright ridge.
        angle[better] = 0.5 * np.arctan2(2.0 * hrc, hrr - hcc)[better]
    return strength, angle


def skeleton_segments(skeleton: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """Split a skeleton at its junctions: (segment labels, n, junction labels, n junctions)."""
    neighbours = ndi.convolve(skeleton.astype(np.uint8), _EIGHT.astype(np.uint8), mode="constant") - 1
    junctions = skeleton & (neighbours >= 3)
    junction_labels, n_junctions = ndi.label(junctions, structure=_EIGHT)
    segment_labels, n_segments = ndi.label(skeleton & ~junctions, structure=_EIGHT)
    return segment_labels, n_segments, junction_labels, n_junctions


def count_fibres(skeleton: np.ndarray, spur_length: float) -> tuple[int, int, np.ndarray]:
    """Number of fibres in a skeleton: segments joined straight through junctions.

    A crossing of two fibres splits the skeleton into four segments and a
    T-junction into three; counting segments over-counts and counting
    connected skeletons under-counts a mat. Here each junction pairs up the
    segments that leave it in nearly opposite directions (one fibre passing
    through) and the count is the number of joined chains. End segments
    shorter than ``spur_length`` are skeletonisation spurs and are dropped.
    Returns (fibres, segments kept, the pruned skeleton).
    """
    segments, n_seg, junctions, n_junc = skeleton_segments(skeleton)
    if n_seg == 0:
        return 0, 0, skeleton
    lengths = np.bincount(segments.ravel(), minlength=n_seg + 1).astype(float)
    junction_ends = _segment_junction_counts(segments, n_seg, junctions)
    ends = skeleton & (ndi.convolve(skeleton.astype(np.uint8), _EIGHT.astype(np.uint8), mode="constant") == 2)
    has_end = np.zeros(n_seg + 1, dtype=bool)
    has_end[segments[ends]] = True
    short = lengths < spur_length
    spur = short & has_end & (junction_ends >= 1)
    # Two wide fibres crossing at a shallow angle thin into two junctions
    # joined by a short bridge: the bridge belongs to the crossing.
    bridge = short & ~has_end & (junction_ends >= 2)
    bridge[0] = spur[0] = False
    keep = ~spur & ~bridge & (lengths >= 2)
    keep[0] = False
    if bridge.any():
        junctions, n_junc = ndi.label((junctions > 0) | bridge[segments], structure=_EIGHT)
    parent = np.arange(n_seg + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in _straight_pairs(segments, junctions, n_junc, keep, max(4.0, spur_length)):
        parent[root(a)] = root(b)
    kept = np.flatnonzero(keep)
    fibres = len({root(int(s)) for s in kept})
    pruned = skeleton & ~(np.isin(segments, np.flatnonzero(~keep[1:]) + 1) & (segments > 0))
    return fibres, len(kept), pruned


def _straight_pairs(segments: np.ndarray, junctions: np.ndarray, n_junc: int, keep: np.ndarray,
                    reach: float) -> list[tuple[int, int]]:
    """Pairs of kept segments that pass straight through a junction.

    A segment's direction at a junction is its tangent where it leaves it:
    from its attaching pixels (those touching the junction) to the mean of
    its pixels within ``reach`` of them. Measuring from the junction's centre
    instead bends the direction towards the centre of a wide junction, so
    two halves of one fibre no longer look opposite. At each junction the
    most opposite pairs are joined greedily while their cosine is below
    ``STRAIGHT_COS``.
    """
    if n_junc == 0:
        return []
    n_keys = len(keep)
    h, w = segments.shape
    padded = np.pad(junctions, 1)
    rows, cols, keys = [], [], []
    for dr, dc in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        shifted = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        r, c = np.nonzero((shifted > 0) & keep[segments])
        rows.append(r)
        cols.append(c)
        keys.append(shifted[r, c].astype(np.int64) * n_keys + segments[r, c])
    # One (junction, segment, pixel) triple per attaching pixel, however many of its neighbours are junction.
    triples = np.unique(np.stack([np.concatenate(keys), np.concatenate(rows), np.concatenate(cols)], axis=1), axis=0)
    if len(triples) == 0:
        return []
    pair_keys, inverse, counts = np.unique(triples[:, 0], return_inverse=True, return_counts=True)
    attach = np.stack([np.bincount(inverse, triples[:, 1]), np.bincount(inverse, triples[:, 2])], axis=1)
    attach /= counts[:, None]
    j_of, s_of = pair_keys // n_keys, pair_keys % n_keys
    # A segment meets at most a few junctions: one vectorised pass per rank
    # of (junction, segment) pair within its segment.
    order = np.argsort(s_of, kind="stable")
    first = np.searchsorted(s_of[order], s_of[order])
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - first
    pix_r, pix_c = np.nonzero(keep[segments])
    pix_s = segments[pix_r, pix_c]
    total = np.zeros((len(pair_keys), 2))
    number = np.zeros(len(pair_keys))
    for k in range(int(rank.max()) + 1):
        pair_of_seg = np.full(n_keys, -1, dtype=np.int64)
        pair_of_seg[s_of[rank == k]] = np.flatnonzero(rank == k)
        pair = pair_of_seg[pix_s]
        has = pair >= 0
        pr, pc, pair = pix_r[has], pix_c[has], pair[has]
        near = np.hypot(pr - attach[pair, 0], pc - attach[pair, 1]) <= reach
        number += np.bincount(pair[near], minlength=len(pair_keys))
        total[:, 0] += np.bincount(pair[near], pr[near], minlength=len(pair_keys))
        total[:, 1] += np.bincount(pair[near], pc[near], minlength=len(pair_keys))
    vec = total / np.maximum(number, 1)[:, None] - attach
    norm = np.hypot(vec[:, 0], vec[:, 1])
    good = norm > 0
    j_of, s_of, vec = j_of[good], s_of[good], vec[good] / norm[good, None]
    pairs: list[tuple[int, int]] = []
    bounds = np.flatnonzero(np.diff(np.r_[-1, j_of, n_junc + 1]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        cos = vec[lo:hi] @ vec[lo:hi].T
        a_idx, b_idx = np.triu_indices(hi - lo, k=1)
        order = np.argsort(cos[a_idx, b_idx])
        used: set[int] = set()
        for k in order:
            if cos[a_idx[k], b_idx[k]] > STRAIGHT_COS:
                break
            a, b = int(s_of[lo + a_idx[k]]), int(s_of[lo + b_idx[k]])
            if a in used or b in used:
                continue
            used.update((a, b))
            pairs.append((a, b))
    return pairs


def _segment_junction_counts(segments: np.ndarray, n_seg: int, junctions: np.ndarray) -> np.ndarray:
    """For each segment, how many distinct junctions it touches (0, 1 or 2)."""
    h, w = junctions.shape
    padded = np.pad(junctions, 1)
    seg_ids, junc_ids = [], []
    for dr, dc in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        shifted = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        hit = (segments > 0) & (shifted > 0)
        seg_ids.append(segments[hit])
        junc_ids.append(shifted[hit])
    pairs = np.unique(np.concatenate(seg_ids).astype(np.int64) * (junctions.max() + 1) + np.concatenate(junc_ids))
    return np.bincount(pairs // (junctions.max() + 1), minlength=n_seg + 1)


def skeleton_length(skeleton: np.ndarray) -> float:
    """Length of a one-pixel-wide skeleton, diagonal steps counting √2."""
    sk = skeleton.astype(np.uint8)
    straight = (sk[1:, :] & sk[:-1, :]).sum() + (sk[:, 1:] & sk[:, :-1]).sum()
    diagonal = (sk[1:, 1:] & sk[:-1, :-1]).sum() + (sk[1:, :-1] & sk[:-1, 1:]).sum()
    return float(straight + np.sqrt(2.0) * diagonal)


def axial_mean(angles_deg: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Mean and circular spread of axial angles (θ ≡ θ + 180°), in degrees.

    Angles are doubled so that 0° and 180° coincide; the spread is the
    circular standard deviation √(−2 ln R) halved back.
    """
    doubled = np.deg2rad(2.0 * angles_deg)
    vec = np.sum(weights * np.exp(1j * doubled)) / max(float(np.sum(weights)), 1e-12)
    # Rounding first keeps a mean of -1e-15° from printing as 180°.
    mean = round(float(np.rad2deg(np.angle(vec)) / 2.0), 3) % 180.0
    resultant = min(max(float(np.abs(vec)), 1e-12), 1.0)
    spread = np.rad2deg(np.sqrt(-2.0 * np.log(resultant))) / 2.0
    return float(mean), float(spread)


def measure_fibres(prep: Prepared, pixel_size_nm: float | None, notes: list[str]) -> FibreStats:
    """Widths, count, orientation and total length of the bright fibres.

    The fibre mask is the bright phase where a Hessian ridge filter also
    fires, tuned to the widths seen in the bright phase; its skeleton gives
    the count and length, twice the distance transform of the bright phase at
    skeleton pixels gives the widths, and the ridge direction at skeleton
    pixels gives the orientation (degrees counter-clockwise from the image
    x axis, 0–180).
    """
    bright, distance = prep.clean, prep.distance
    empty = FibreStats(0, [], None if pixel_size_nm is None else [], None, None, None, 0.0)
    if not prep.skeleton.any():
        notes.append("fibres: no bright structures found")
        return empty
    rough_width = 2.0 * float(np.median(distance[prep.skeleton]))
    base = float(np.clip(0.3 * rough_width, 1.0, 12.0))
    strength, angle = ridge_filter(prep.smooth, (base * 0.7, base, base * 1.4))
    ridges = strength > threshold_otsu(strength) if strength.max() > 0 else strength > 0
    mask, _, n = remove_specks(ridges & bright, min_object_area(prep.flat.shape))
    if n == 0:
        notes.append("fibres: no ridges found")
        return empty
    skeleton = skeletonize(mask)
    count, n_segments, skeleton = count_fibres(skeleton, spur_length=max(3.0, rough_width))
    on = skeleton & (distance > 0)
    widths_a = 2.0 * distance[on] - 0.5
    widths_px = np.clip(widths_a, 1.0, None) * prep.scale
    length = skeleton_length(skeleton) * prep.scale
    unit = 1.0 if pixel_size_nm is None else pixel_size_nm
    # Convert the (row, col) along-ridge angle to the image convention: x to
    # the right, y up (rows grow downwards, hence the sign flip).
    phi = angle[on]
    theta = np.rad2deg(np.arctan2(-np.cos(phi), np.sin(phi)))
    orientation, spread = axial_mean(theta, strength[on]) if on.any() else (None, None)
    # Widths are reported per fibre-length sample, thinned so the list stays short.
    step = max(1, len(widths_px) // 200)
    widths_list = np.sort(widths_px)[::step]
    mean_width, _, _ = summary(widths_px * unit)
    if count and length < 3 * float(np.mean(widths_px)) * count:
        notes.append("fibres: structures are short and wide; these look more like particles than fibres")
    return FibreStats(
        count=int(count),
        widths_px=[round(float(w), 2) for w in widths_list],
        widths_nm=None if pixel_size_nm is None else [round(float(w) * pixel_size_nm, 2) for w in widths_list],
        mean_width=mean_width,
        orientation_deg=orientation,
        orientation_spread_deg=spread,
        total_length=length * unit,
        segment_count=int(n_segments),
    )
