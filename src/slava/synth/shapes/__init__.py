"""Procedural scenes (height + material maps) for the ten SEM categories.

A generator takes ``(rng, height, width, pixel_size_nm)`` and returns a
:class:`Scene` of exactly that size: the image region above the data bar.
Heights are in pixels so that slopes are comparable at every magnification;
``quantities`` are computed from the geometry that was rasterised into this
scene, never from the parameters that were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi


@dataclass
class Scene:
    """A rendered specimen before SEM image formation.

    ``height``: surface height in pixel units, float32 [H, W].
    ``material``: secondary-electron yield factor, float32 [H, W] (≈0.2–1.5).
    ``labels``: instance map of the counted objects (0 = none), int32 [H, W], or None.
    ``mask``: foreground (objects) vs substrate/pores, bool [H, W]; used for
    charging halos and for the tests.
    """

    height: np.ndarray
    material: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    kind: str = ""
    quantities: dict = field(default_factory=dict)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit std (float32)."""
    f = int(sigma // 3)
    if f >= 2:
        # Wide kernels are filtered on a coarse grid and upsampled: same look, a fraction of the cost.
        coarse = (shape[0] // f + 2, shape[1] // f + 2)
        small = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / f, mode="wrap")
        noise = ndi.zoom(small, f, order=1, grid_mode=False)[: shape[0], : shape[1]]
    else:
        noise = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma, 0.3), mode="wrap")
    std = float(noise.std())
    return (noise - noise.mean()) / (std if std > 0 else 1.0)


def substrate(rng: np.random.Generator, shape: tuple[int, int], roughness: float) -> np.ndarray:
    """A slightly rough substrate height map: two octaves of smooth noise."""
    h = roughness * smooth_noise(rng, shape, rng.uniform(1.0, 3.0))
    h += 2.0 * roughness * smooth_noise(rng, shape, rng.uniform(8.0, 30.0))
    return h


def draw_tubes(
    shape: tuple[int, int],
    paths: list[np.ndarray],
    widths: list[float],
    bases: list[float],
    rings: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise round tubes along polylines, later paths lying on top of earlier ones.

    Each tube is drawn as ``rings`` nested lines of decreasing width and rising
    height, an approximation of a cylinder's circular cross-section that costs
    a few PIL line calls instead of a distance transform per tube. Paths must
    turn gently between vertices: joints are not rounded (PIL's rounded joints
    cost ten times more). Returns
    (height float32, labels int32 with tube i+1).
    """
    h, w = shape
    height_img = Image.new("F", (w, h), 0.0)
    label_img = Image.new("I", (w, h), 0)
    dh = ImageDraw.Draw(height_img)
    dl = ImageDraw.Draw(label_img)
    for i, (path, width, base) in enumerate(zip(paths, widths, bases)):
        pts = [(float(x), float(y)) for x, y in path]
        r = width / 2.0
        dl.line(pts, fill=i + 1, width=max(1, int(round(width))))
        for k in range(rings):
            frac = 1.0 - k / rings
            z = base + r * np.sqrt(max(0.0, 1.0 - frac * frac))
            dh.line(pts, fill=float(z), width=max(1, int(round(width * frac))))
    return np.asarray(height_img, dtype=np.float32).copy(), np.asarray(label_img, dtype=np.int32).copy()


def chord_length(mask: np.ndarray) -> float:
    """Mean intercept length (px) of the True phase along rows and columns.

    Runs cut by the region border are excluded because their true length is
    unknown; returns 0 when the phase has no complete run.
    """
    lengths = []
    for m in (mask, mask.T):
        padded = np.zeros((m.shape[0], m.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = m
        d = np.diff(padded, axis=1)
        r, starts = np.nonzero(d == 1)
        _, ends = np.nonzero(d == -1)
        inner = (starts > 0) & (ends < m.shape[1])
        lengths.append((ends - starts)[inner])
    allr = np.concatenate(lengths)
    return float(allr.mean()) if allr.size else 0.0


def generators():
    """Mapping class id -> generator function (imported lazily to keep imports cheap)."""
    from slava.synth.shapes import blobs, devices, lines, surfaces

    return {
        "biological": blobs.biological,
        "fibres": lines.fibres,
        "films_coated_surfaces": surfaces.films,
        "mems_devices_electrodes": devices.mems,
        "nanowires": lines.nanowires,
        "particles": blobs.particles,
        "patterned_surfaces": surfaces.patterned,
        "porous_sponges": surfaces.porous,
        "powders": blobs.powders,
        "tips": devices.tips,
    }


def feature_size_nm(
    rng: np.random.Generator, px: float, nm_range: tuple[float, float], px_range: tuple[float, float]
) -> float:
    """A feature size in nm, log-uniform over the part of ``nm_range`` that is ``px_range`` pixels wide.

    Keeps sizes physically plausible for the class while staying resolvable at
    this pixel size; when the two ranges do not overlap (pixel sizes outside
    the training range) the nearest plausible size wins, so features look too
    large or too small on purpose.
    """
    lo = max(nm_range[0], px * px_range[0])
    hi = min(nm_range[1], px * px_range[1])
    if lo > hi:
        return float(nm_range[0] if px * px_range[1] < nm_range[0] else nm_range[1])
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def voronoi(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A Voronoi tessellation of ``n`` random seeds: (cell labels 1..n int32, distance to the nearest cell boundary in px).

    Seeds that fall on the same pixel merge, so a label may be missing; count
    cells from the label map, not from ``n``.
    """
    seeds = np.zeros((h, w), np.int32)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[iy, ix]
    boundary = np.zeros((h, w), bool)
    boundary[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    boundary[1:, :] |= lab[1:, :] != lab[:-1, :]
    return lab, ndi.distance_transform_edt(~boundary).astype(np.float32)
