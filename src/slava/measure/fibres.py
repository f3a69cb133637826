"""Fibres and wires: bright ridges, their widths, number, orientation and length."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from slava.measure.prepare import Prepared, min_object_area, otsu, remove_specks, summary
from slava.measure.record import FibreStats

_EIGHT = np.ones((3, 3), dtype=bool)
SCALES = (0.7, 1.4)
"""Ridge-filter scales, as multiples of the σ matched to the typical width: two cover its spread."""
HALF_RES_SIGMA = 2.0
"""Matched σ (px) from which the ridge filter runs at half resolution (fibres ≳ 7 px wide).

Its smallest scale is then ≥ 0.7 half-resolution px; on the synthetic
fibres and nanowires that counts and orients as well as full resolution
(slightly better) at a quarter of the pixels."""
STRAIGHT_COS = np.cos(np.deg2rad(150.0))
"""Two segments leaving a junction this close to opposite directions are one fibre crossing it."""


def ridge_filter(image: np.ndarray, sigmas: tuple[float, ...], factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale Hessian ridge strength for bright ridges, and the ridge direction.

    Strength is the scale-normalised magnitude of the most negative Hessian
    eigenvalue (as in Sato's filter), maximised over ``sigmas``. The direction
    is the along-ridge eigenvector angle in radians, measured in (row, col)
    coordinates from the row axis, at the winning scale. With ``factor`` > 1
    the filter runs on an image block-averaged by ``factor`` at σ / ``factor``
    (scale normalisation makes the strengths the same) and both maps are
    repeated back to full size.
    """
    full = image.shape
    if factor > 1:
        image = image[: full[0] // factor * factor, : full[1] // factor * factor]
        image = image.reshape(full[0] // factor, factor, full[1] // factor, factor).mean(axis=(1, 3))
    strength = np.zeros(image.shape, dtype=np.float32)
    twice_hrc = np.zeros(image.shape, dtype=np.float32)
    spread = np.zeros(image.shape, dtype=np.float32)
    for sigma in [s / factor for s in sigmas]:
        # Finite differences of one blurred copy: a third of the cost of
        # three derivative-of-Gaussian filters, and the same at sigma ≥ 1.
        blurred = ndi.gaussian_filter(image, sigma, truncate=3.0)
        dr, dc = np.gradient(blurred)
        hrr = np.gradient(dr, axis=0)
        hrc = np.gradient(dr, axis=1)
        hcc = np.gradient(dc, axis=1)
        hrc *= 2.0
        diff = hrr - hcc
        # −(most negative eigenvalue) · σ²; both eigenvalues scale with σ², the direction does not.
        response = np.hypot(diff, hrc)
        response -= hrr
        response -= hcc
        response *= 0.5 * sigma**2
        better = response > strength
        np.copyto(strength, response, where=better)
        np.copyto(twice_hrc, hrc, where=better)
        np.copyto(spread, diff, where=better)
    # The larger eigenvalue's eigenvector runs along a bright ridge.
    angle = 0.5 * np.arctan2(twice_hrc, spread)
    if factor > 1:
        strength, angle = (_expand(a, factor, full) for a in (strength, angle))
    return strength, angle


def _expand(image: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel repeated ``factor`` × ``factor`` times, the edge repeated to fill ``shape``."""
    big = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return np.pad(big, ((0, shape[0] - big.shape[0]), (0, shape[1] - big.shape[1])), mode="edge")


def skeleton_segments(skeleton: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int, np.ndarray]:
    """Split a skeleton at its junctions: (segment labels, n, junction labels, n junctions, end pixels)."""
    neighbours = _neighbour_counts(skeleton)
    junctions = skeleton & (neighbours >= 3)
    junction_labels, n_junctions = ndi.label(junctions, structure=_EIGHT)
    segment_labels, n_segments = ndi.label(skeleton & ~junctions, structure=_EIGHT)
    return segment_labels, n_segments, junction_labels, n_junctions, skeleton & (neighbours == 1)


def _neighbour_counts(skeleton: np.ndarray) -> np.ndarray:
    """Number of 8-neighbours of each pixel that are on the skeleton (outside the image counts as off).

    Eight shifted additions: several times faster than ``ndi.convolve`` on
    a small integer image.
    """
    h, w = skeleton.shape
    padded = np.pad(skeleton.view(np.uint8), 1)
    counts = np.zeros((h, w), dtype=np.uint8)
    for dr, dc in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
        counts += padded[dr : dr + h, dc : dc + w]
    return counts


def count_fibres(skeleton: np.ndarray, spur_length: float) -> tuple[int, int, int, np.ndarray]:
    """Number of fibres in a skeleton: segments joined straight through junctions, and where they bend.

    A crossing of two fibres splits the skeleton into four segments and a
    T-junction into three; counting segments over-counts and counting
    connected skeletons under-counts a mat. Here each junction pairs up the
    segments that leave it in nearly opposite directions (one fibre passing
    through); a junction no fibre passes straight through is one object
    bending or branching (a kinked wire, a wire on its base), whose segments
    are joined too. The count is the number of joined chains. End segments
    shorter than ``spur_length`` are skeletonisation spurs and are dropped.
    Returns (fibres, straight chains, segments kept, the pruned skeleton):
    the straight chains are the pieces a branched blob breaks into, which
    tell such blobs from fibres.
    """
    segments, n_seg, junctions, n_junc, ends = skeleton_segments(skeleton)
    if n_seg == 0:
        return 0, 0, 0, skeleton
    lengths = np.bincount(segments.ravel(), minlength=n_seg + 1).astype(float)
    junction_ends = _segment_junction_counts(segments, n_seg, junctions)
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

    straight, bends = _junction_pairs(segments, junctions, n_junc, keep, max(4.0, spur_length))
    kept = np.flatnonzero(keep)
    for a, b in straight:
        parent[root(a)] = root(b)
    chains = len({root(int(s)) for s in kept})
    for a, b in bends:
        parent[root(a)] = root(b)
    fibres = len({root(int(s)) for s in kept})
    drop = ~keep
    drop[0] = False
    pruned = skeleton & ~drop[segments]
    return fibres, chains, len(kept), pruned


def _junction_pairs(segments: np.ndarray, junctions: np.ndarray, n_junc: int, keep: np.ndarray,
                    reach: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Pairs of kept segments that pass straight through a junction, and pairs that meet where none does.

    A segment's direction at a junction is its tangent where it leaves it:
    from its attaching pixels (those touching the junction) to the mean of
    its pixels within ``reach`` of them. Measuring from the junction's centre
    instead bends the direction towards the centre of a wide junction, so
    two halves of one fibre no longer look opposite. At each junction the
    most opposite pairs are joined greedily while their cosine is below
    ``STRAIGHT_COS``. At a junction where no pair is that straight, no fibre
    crosses: its segments are one object bending or branching there, and
    are returned as the second list.
    """
    if n_junc == 0:
        return [], []
    n_keys = len(keep)
    junc, seg, rows, cols = _attachments(segments, junctions)
    kept = keep[seg]
    # One (junction, segment, pixel) triple per attaching pixel, however many of its neighbours are junction.
    triples = np.stack([junc[kept] * n_keys + seg[kept], rows[kept], cols[kept]], axis=1)
    if len(triples) == 0:
        return [], []
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
    bends: list[tuple[int, int]] = []
    bounds = np.flatnonzero(np.diff(np.r_[-1, j_of, n_junc + 1]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        cos = vec[lo:hi] @ vec[lo:hi].T
        a_idx, b_idx = _pairs_of(hi - lo)
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
        if not used:
            # No fibre passes through: one object bends or branches here (a kinked wire, a wire on its base).
            bends.extend((int(s_of[lo]), int(s_of[m])) for m in range(lo + 1, hi))
    return pairs, bends


@lru_cache(maxsize=32)
def _pairs_of(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a < b) of ``n`` items; junctions have few sizes, so they are built once each."""
    return np.triu_indices(n, k=1)


def _segment_junction_counts(segments: np.ndarray, n_seg: int, junctions: np.ndarray) -> np.ndarray:
    """For each segment, how many distinct junctions it touches (0, 1 or 2)."""
    junc, seg, _, _ = _attachments(segments, junctions)
    pairs = np.unique(seg * (int(junctions.max()) + 1) + junc)
    return np.bincount(pairs // (int(junctions.max()) + 1), minlength=n_seg + 1)


def _attachments(segments: np.ndarray, junctions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every segment pixel touching a junction: (junction label, segment label, row, col), each once.

    Sorted by junction, segment, row, col. Found from the few junction
    pixels' eight neighbours rather than by shifting whole images.
    """
    h, w = segments.shape
    jr, jc = np.nonzero(junctions)
    jl = junctions[jr, jc].astype(np.int64)
    found = []
    for dr, dc in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        r, c = jr + dr, jc + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        r, c, j = r[inside], c[inside], jl[inside]
        s = segments[r, c].astype(np.int64)
        on = s > 0
        found.append(((j[on] * (int(segments.max()) + 1) + s[on]) * h + r[on]) * w + c[on])
    key = np.unique(np.concatenate(found))
    pixel, pair = key % (h * w), key // (h * w)
    n_keys = int(segments.max()) + 1
    return pair // n_keys, pair % n_keys, pixel // w, pixel % w


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
    factor = 2 if base >= HALF_RES_SIGMA else 1
    strength, angle = ridge_filter(prep.smooth, tuple(base * k for k in SCALES), factor)
    ridges = strength > otsu(strength) if strength.max() > 0 else strength > 0
    mask, _, n = remove_specks(ridges & bright, min_object_area(prep.flat.shape))
    if n == 0:
        notes.append("fibres: no ridges found")
        return empty
    skeleton = skeletonize(mask)
    count, chains, n_segments, skeleton = count_fibres(skeleton, spur_length=max(3.0, rough_width))
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
    # Judged on the straight chains: joined where they bend, blobs would pass for long fibres.
    if count and length < 3 * float(np.mean(widths_px)) * chains:
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
