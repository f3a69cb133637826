"""Compact objects: particles (spheres), powders (faceted grains), biological specimens."""

from __future__ import annotations

import numpy as np
from slava.synth.shapes import Scene, feature_size_nm, smooth_noise, substrate, voronoi

_MAX_OBJECTS = 400


def _place_discs(rng, h, w, radii, mode, margin_band=1.0):
    """Non-overlapping disc centres for ``radii`` (px), separated, touching clusters or dense.

    Discs may cross the image border, but never lie within ``margin_band`` px
    of it: each disc is either clearly inside or clearly cut, so the count of
    "entirely inside" discs cannot depend on rasterisation.
    """
    placed: list[tuple[float, float, float]] = []
    xs = np.empty(0)
    ys = np.empty(0)
    rs = np.empty(0)
    gap = 0.0 if mode != "separated" else 1.5
    for r in radii:
        for _ in range(25):
            if mode == "touching" and placed and rng.random() < 0.85:
                j = rng.integers(len(placed))
                ang = rng.uniform(0, 2 * np.pi)
                d = placed[j][2] + r + 0.3
                x, y = placed[j][0] + d * np.cos(ang), placed[j][1] + d * np.sin(ang)
            else:
                x, y = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
            edges = np.array([x - r, w - 1 - (x + r), y - r, h - 1 - (y + r)])
            if np.any(np.abs(edges) < margin_band):
                continue
            reach = np.array([x + r, w - 1 - (x - r), y + r, h - 1 - (y - r)])
            if np.any(reach < 1 + margin_band):  # a cut disc must still show some pixels
                continue
            if xs.size and np.any(np.hypot(xs - x, ys - y) < rs + r + gap):
                continue
            placed.append((x, y, r))
            xs, ys, rs = np.append(xs, x), np.append(ys, y), np.append(rs, r)
            break
    return placed


def particles(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """Round spheres, separated, touching in clusters or densely packed, on a substrate.

    ``particle_count`` counts spheres entirely inside the image region; spheres
    cut by the border or the data bar are rendered but only reported as
    ``border_particle_count``.
    """
    mode = rng.choice(["separated", "touching", "dense"], p=[0.4, 0.35, 0.25])
    d_med_nm = feature_size_nm(rng, px, (4.0, 800.0), (5.0, 36.0))
    spread = rng.uniform(0.04, 0.35)
    coverage = {"separated": rng.uniform(0.05, 0.3), "touching": rng.uniform(0.1, 0.4), "dense": rng.uniform(0.4, 0.6)}[mode]
    r_med = d_med_nm / px / 2
    n_target = int(min(_MAX_OBJECTS, coverage * h * w / (np.pi * r_med**2 * np.exp(2 * spread**2))))
    radii = np.sort(r_med * np.exp(spread * rng.standard_normal(max(n_target, 1))))[::-1]
    radii = np.clip(radii, 2.0, min(h, w) / 3)
    discs = _place_discs(rng, h, w, radii, mode)

    height = substrate(rng, (h, w), rng.uniform(0.05, 0.6))
    labels = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside, border_count = [], 0
    flat = rng.uniform(0.6, 1.0)  # oblate particles on some substrates
    for i, (x, y, r) in enumerate(discs, start=1):
        x0, x1 = max(int(x - r) - 1, 0), min(int(x + r) + 2, w)
        y0, y1 = max(int(y - r) - 1, 0), min(int(y + r) + 2, h)
        d2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        disc = d2 < r * r
        z = np.where(disc, flat * np.sqrt(np.maximum(r * r - d2, 0)) + 0.5, -np.inf)
        sub = height[y0:y1, x0:x1]
        top = z > sub
        sub[top] = z[top]
        labels[y0:y1, x0:x1][disc] = i
        if x - r > 0 and y - r > 0 and x + r < w - 1 and y + r < h - 1:
            inside.append(2 * r * px)
        else:
            border_count += 1
    mask = labels > 0
    material = np.where(mask, rng.uniform(1.0, 1.6), rng.uniform(0.35, 0.9)).astype(np.float32)
    diam = [round(float(d), 3) for d in inside]
    q = {
        "particle_count": len(diam),
        "particle_diameters_nm": diam,
        "mean_diameter_nm": round(float(np.mean(diam)), 3) if diam else 0.0,
        "coverage": round(float(mask.mean()), 4),
        "border_particle_count": border_count,
        "arrangement": str(mode),
    }
    return Scene(height.astype(np.float32), material, mask, labels, kind=str(mode), quantities=q)


def _grain_patch(rng, r, aspect):
    """A faceted grain: a truncated pyramid over a random convex-ish polygon (height, footprint)."""
    nv = int(rng.integers(5, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, nv))
    rad = r * rng.uniform(0.7, 1.0, nv)
    rot = rng.uniform(0, np.pi)
    vx = rad * np.cos(ang) * aspect
    vy = rad * np.sin(ang) / aspect
    vx, vy = vx * np.cos(rot) - vy * np.sin(rot), vx * np.sin(rot) + vy * np.cos(rot)
    apex = rng.uniform(-0.25, 0.25, 2) * r
    ext = int(np.ceil(max(np.abs(vx).max(), np.abs(vy).max()))) + 1
    yy, xx = np.mgrid[-ext : ext + 1, -ext : ext + 1].astype(np.float32)
    px_, py_ = xx - apex[0], yy - apex[1]
    gauge = np.zeros_like(xx)
    for k in range(nv):
        ax, ay = vx[k] - apex[0], vy[k] - apex[1]
        bx, by = vx[(k + 1) % nv] - apex[0], vy[(k + 1) % nv] - apex[1]
        nx, ny = by - ay, -(bx - ax)
        d = nx * ax + ny * ay
        if d <= 1e-6:
            continue
        np.maximum(gauge, (nx * px_ + ny * py_) / d, out=gauge)
    trunc = rng.uniform(0.35, 1.0)
    z = r * rng.uniform(0.4, 0.9) * np.minimum(1 - gauge, trunc) / trunc
    foot = gauge < 1
    return np.where(foot, z, -np.inf).astype(np.float32), foot, ext


def powders(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """Irregular faceted grains of broadly varied size, piled into agglomerates.

    ``grain_count`` counts grains whose centre lies in the image region and of
    which at least a quarter of the footprint stays visible; sizes are their
    footprint's equivalent-circle diameters.
    """
    d_med_nm = feature_size_nm(rng, px, (50.0, 20000.0), (12.0, 60.0))
    spread = rng.uniform(0.3, 0.7)
    r_med = d_med_nm / px / 2
    n_clusters = int(rng.integers(1, 6))
    centres = rng.uniform([0, 0], [w, h], (n_clusters, 2))
    coverage = rng.uniform(1.0, 2.5)
    n = int(min(_MAX_OBJECTS, coverage * h * w / (np.pi * r_med**2 * np.exp(2 * spread**2)) + 3))
    height = substrate(rng, (h, w), rng.uniform(0.3, 1.5)) - 2.0
    labels = np.zeros((h, w), np.int32)
    grains = []
    for i in range(1, n + 1):
        r = float(np.clip(r_med * np.exp(spread * rng.standard_normal()), 2.0, min(h, w) / 2.5))
        c = centres[rng.integers(n_clusters)]
        spread_px = rng.uniform(0.1, 0.3) * max(h, w)
        x, y = c + spread_px * rng.standard_normal(2)
        z, foot, ext = _grain_patch(rng, r, rng.uniform(0.75, 1.35))
        z = z + rng.uniform(0, 1.0) * r  # grains rest on each other at different levels
        y0, x0 = int(round(y)) - ext, int(round(x)) - ext
        ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + z.shape[0], h), min(x0 + z.shape[1], w)
        if ya >= yb or xa >= xb:
            continue
        zs = z[ya - y0 : yb - y0, xa - x0 : xb - x0]
        sub = height[ya:yb, xa:xb]
        top = zs > sub
        sub[top] = zs[top]
        labels[ya:yb, xa:xb][top] = i
        grains.append((i, x, y, float(foot.sum())))
    visible = np.bincount(labels.ravel(), minlength=n + 1)
    sizes = [
        2 * np.sqrt(area / np.pi) * px
        for i, x, y, area in grains
        if 0 <= x < w and 0 <= y < h and visible[i] >= 0.25 * area
    ]
    mask = labels > 0
    tex = smooth_noise(rng, (h, w), 1.0)
    material = np.where(mask, rng.uniform(0.8, 1.3) + 0.05 * tex, rng.uniform(0.2, 0.6)).astype(np.float32)
    q = {
        "grain_count": len(sizes),
        "grain_sizes_nm": [round(float(s), 3) for s in sizes],
        "mean_grain_size_nm": round(float(np.mean(sizes)), 3) if sizes else 0.0,
        "coverage": round(float(mask.mean()), 4),
    }
    return Scene(height.astype(np.float32), material, mask, labels, kind="agglomerate", quantities=q)


def _bacteria(rng, h, w, px, height, labels):
    width_nm = feature_size_nm(rng, px, (250.0, 1300.0), (5.0, 28.0))
    r = width_nm / px / 2
    n = int(rng.integers(3, 40))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    objs = []
    base_ang = rng.uniform(0, np.pi)
    aligned = rng.random() < 0.3
    for i in range(1, n + 1):
        length = r * 2 * rng.uniform(1.5, 5.0)
        ang = base_ang + rng.normal(0, 0.2) if aligned else rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        dx, dy = np.cos(ang) * (length / 2 - r), np.sin(ang) * (length / 2 - r)
        ext = length / 2 + 2
        x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 1, w)
        y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        px_, py_ = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        t = np.clip((px_ * dx + py_ * dy) / max(dx * dx + dy * dy, 1e-6), -1, 1)
        d2 = (px_ - t * dx) ** 2 + (py_ - t * dy) ** 2
        z = np.where(d2 < r * r, 0.8 * np.sqrt(np.maximum(r * r - d2, 0)) + 0.3, -np.inf)
        sub = height[y0:y1, x0:x1]
        top = z > sub
        sub[top] = z[top]
        labels[y0:y1, x0:x1][top] = i
        if 0 <= cx < w and 0 <= cy < h:
            objs.append((length * px, 2 * r * px))
    return objs


def _cells(rng, h, w, px, height, labels):
    diam_nm = feature_size_nm(rng, px, (1500.0, 20000.0), (30.0, 150.0))
    n = int(rng.integers(1, 7))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    objs = []
    for i in range(1, n + 1):
        R = diam_nm / px / 2 * rng.uniform(0.7, 1.3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        theta = np.arctan2(yy - cy, xx - cx)
        rho = np.hypot(xx - cx, yy - cy)
        edge = np.ones_like(theta)
        for k in range(2, 7):
            edge += rng.uniform(0, 0.12 / k * 3) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        rr = R * edge
        inside = rho < rr
        dome = R * rng.uniform(0.2, 0.5) * np.sqrt(np.clip(1 - (rho / rr) ** 2, 0, 1)) ** rng.uniform(0.5, 1.2)
        z = np.where(inside, dome + 0.5, -np.inf)
        top = z > height
        height[top] = z[top]
        labels[top] = i
        # Filopodia: thin protrusions radiating from the membrane onto the substrate.
        for _ in range(int(rng.integers(0, 12))):
            a = rng.uniform(0, 2 * np.pi)
            l0, l1 = R * 0.9, R * rng.uniform(1.2, 2.2)
            ts = np.linspace(l0, l1, 40)
            fx, fy = (cx + ts * np.cos(a)).astype(int), (cy + ts * np.sin(a)).astype(int)
            ok = (fx >= 0) & (fx < w) & (fy >= 0) & (fy < h)
            height[fy[ok], fx[ok]] = np.maximum(height[fy[ok], fx[ok]], 1.2)
        if 0 <= cx < w and 0 <= cy < h:
            objs.append((2 * R * px, 2 * R * px))
    return objs


def _tissue(rng, h, w, px, height, labels):
    cell_nm = feature_size_nm(rng, px, (1500.0, 15000.0), (25.0, 90.0))
    c = cell_nm / px
    n = max(2, int(h * w / (c * c)))
    lab, dist = voronoi(rng, h, w, n)
    bulge = c * rng.uniform(0.1, 0.3) * np.tanh(dist / (c * 0.25))
    height += bulge
    labels[:] = lab
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return [(2 * np.sqrt(a / np.pi) * px,) * 2 for a in areas if a > 0]


def biological(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """Bacteria rods, rounded cells with filopodia, or a tissue-like layer of domed cells.

    ``object_count`` counts objects whose centre lies in the image region.
    Everything is soft and rounded, coated surfaces with microvilli texture.
    """
    # Whole cells and tissue need a field of several µm; at high magnification only bacteria-sized objects fit.
    kinds = ["bacteria"] + [k for k, min_px in (("cells", 12.0), ("tissue", 18.0)) if px >= min_px]
    kind = str(rng.choice(kinds))
    height = substrate(rng, (h, w), rng.uniform(0.2, 1.0))
    labels = np.zeros((h, w), np.int32)
    objs = {"bacteria": _bacteria, "cells": _cells, "tissue": _tissue}[kind](rng, h, w, px, height, labels)
    mask = labels > 0
    # Microvilli / coating grain: small bumps on the organic surfaces only.
    bumps = np.clip(smooth_noise(rng, (h, w), rng.uniform(0.7, 2.0)) - rng.uniform(0.5, 1.5), 0, None)
    height += np.where(mask, rng.uniform(0.3, 2.0) * bumps, 0).astype(np.float32)
    material = np.where(mask, rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.9)).astype(np.float32)
    lengths = [o[0] for o in objs]
    widths = [o[1] for o in objs]
    q = {
        "object_kind": kind,
        "object_count": len(objs),
        "mean_length_nm": round(float(np.mean(lengths)), 3) if objs else 0.0,
        "mean_width_nm": round(float(np.mean(widths)), 3) if objs else 0.0,
        "coverage": round(float(mask.mean()), 4),
    }
    return Scene(height.astype(np.float32), material, mask, labels, kind=kind, quantities=q)
