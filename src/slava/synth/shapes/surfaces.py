"""Continuous surfaces: films and coatings, porous sponges, periodic patterns."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from slava.synth.shapes import Scene, chord_length, feature_size_nm, smooth_noise, substrate, voronoi


def _equiv_diameters(lab: np.ndarray) -> np.ndarray:
    areas = np.bincount(lab.ravel())[1:]
    return 2 * np.sqrt(areas[areas > 0] / np.pi)


def films(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """A continuous film: polycrystalline grains, a cracked coating, or a nodular / rippled texture.

    Grain and domain sizes are the equivalent-circle diameters of the cells as
    rasterised (cells cut by the border included); ``crack_fraction`` is the
    fraction of the region that is crack.
    """
    kind = str(rng.choice(["grainy", "cracked", "textured"], p=[0.4, 0.3, 0.3]))
    height = substrate(rng, (h, w), rng.uniform(0.1, 0.5))
    material = np.full((h, w), rng.uniform(0.6, 1.1), np.float32)
    mask = np.ones((h, w), bool)
    q: dict = {"film_kind": kind, "mean_grain_size_nm": 0.0, "crack_fraction": 0.0}
    if kind in ("grainy", "cracked"):
        grain_nm = feature_size_nm(rng, px, (5.0, 800.0), (6.0, 30.0))
        g = grain_nm / px
        lab, dist = voronoi(rng, h, w, max(2, int(h * w / (g * g))))
        n = int(lab.max())
        tilt = rng.normal(0, 0.25, (n + 1, 2)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # Each grain is a slightly tilted facet with grooved boundaries.
        height += (tilt[lab, 0] * (xx % g) + tilt[lab, 1] * (yy % g)) * 0.3
        height += rng.uniform(0.5, 2.0) * np.tanh(dist / rng.uniform(0.7, 2.0))
        material *= 1 + 0.08 * rng.standard_normal(n + 1).astype(np.float32)[lab]
        q["mean_grain_size_nm"] = round(float(_equiv_diameters(lab).mean() * px), 3)
        labels = lab
        if kind == "cracked":
            dom_px = g * rng.uniform(4, 10)
            dlab, ddist = voronoi(rng, h, w, max(2, int(h * w / (dom_px * dom_px))))
            jitter = smooth_noise(rng, (h, w), 3.0) * 0.8
            crack_w = rng.uniform(0.8, 3.0)
            cracks = (ddist + jitter) < crack_w
            height = np.where(cracks, -rng.uniform(4.0, 12.0), height + np.tanh(ddist / 3.0) * 1.5)
            material = np.where(cracks, 0.3, material).astype(np.float32)
            mask = ~cracks
            labels = np.where(cracks, 0, dlab)
            q["mean_grain_size_nm"] = round(float(_equiv_diameters(dlab).mean() * px), 3)
            q["crack_fraction"] = round(float(cracks.mean()), 4)
    else:
        corr_nm = feature_size_nm(rng, px, (3.0, 500.0), (2.0, 15.0))
        c = corr_nm / px
        if rng.random() < 0.5:
            # Nodular (cauliflower) coating: domes of one size scale.
            bumps = smooth_noise(rng, (h, w), c)
            height += rng.uniform(2.0, 6.0) * np.abs(bumps) ** 0.7 * np.sign(bumps)
        else:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            a = rng.uniform(0, np.pi)
            phase = (xx * np.cos(a) + yy * np.sin(a)) / (c * 2) + 2.0 * smooth_noise(rng, (h, w), c * 3)
            height += rng.uniform(1.0, 3.0) * np.sin(phase) + smooth_noise(rng, (h, w), 1.0) * 0.4
        labels = None
        q["correlation_length_nm"] = round(float(c * px), 3)
    q["roughness_rms_nm"] = round(float(height[mask].std() * px), 3) if mask.any() else 0.0
    return Scene(height.astype(np.float32), material, mask, labels, kind=kind, quantities=q)


def porous(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """A bicontinuous ligament network (dealloyed nanoporous metal) or an open-cell foam of struts.

    ``pore_fraction`` is the pore share of the top layer in the image region;
    pore and ligament sizes are mean intercept lengths along rows and columns.
    """
    kind = str(rng.choice(["bicontinuous", "foam"], p=[0.75, 0.25]))
    lig_nm = feature_size_nm(rng, px, (5.0, 2000.0), (5.0, 22.0))
    s = lig_nm / px
    if kind == "bicontinuous":
        field = smooth_noise(rng, (h, w), s * 0.55)
        if rng.random() < 0.4:
            field += 0.15 * smooth_noise(rng, (h, w), s * 0.3)
        solid = field > np.quantile(field, rng.uniform(0.3, 0.65))
    else:
        lab, dist = voronoi(rng, h, w, max(2, int(h * w / (s * 4) ** 2)))
        solid = dist < s * rng.uniform(0.2, 0.45)
    dist_in = ndi.distance_transform_edt(solid).astype(np.float32)
    top = s * rng.uniform(0.3, 0.6)
    height = top * np.tanh(dist_in / max(s * 0.25, 0.8))
    # Deeper ligaments show through the pores, darker and out of the top layer.
    deeper = smooth_noise(rng, (h, w), s * 0.55) > 0.3
    floor = -s * rng.uniform(1.0, 2.5)
    height = np.where(solid, height, np.where(deeper, floor * 0.5, floor)).astype(np.float32)
    material = np.where(solid, rng.uniform(0.9, 1.3), 0.5).astype(np.float32)
    labels, _ = ndi.label(~solid)
    q = {
        "sponge_kind": kind,
        "pore_fraction": round(float(1 - solid.mean()), 4),
        "mean_pore_size_nm": round(chord_length(~solid) * px, 3),
        "mean_ligament_size_nm": round(chord_length(solid) * px, 3),
    }
    return Scene(height, material, solid, labels.astype(np.int32), kind=kind, quantities=q)


def patterned(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """A periodic array of holes or pillars (square or hexagonal lattice) or a line grating.

    ``pitch_nm`` is the lattice period and ``feature_size_nm`` the hole/pillar
    diameter or line width as rasterised; defects (missing features) are rare.
    """
    pattern = str(rng.choice(["holes", "pillars", "lines"], p=[0.4, 0.35, 0.25]))
    lattice = "line" if pattern == "lines" else str(rng.choice(["square", "hexagonal"]))
    pitch_nm = feature_size_nm(rng, px, (20.0, 5000.0), (8.0, 45.0))
    p = pitch_nm / px
    fill = rng.uniform(0.3, 0.7)
    a = rng.uniform(-0.2, 0.2) if rng.random() < 0.7 else rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = xx * np.cos(a) + yy * np.sin(a)
    v = -xx * np.sin(a) + yy * np.cos(a)
    missing = rng.random((64, 64)) < rng.uniform(0.0, 0.04)
    if pattern == "lines":
        d = np.abs(u - p * np.round(u / p))
        r = fill * p / 2
        feat = d < r
        prof = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1)) ** 0.3
        feature = fill * p
    else:
        r = fill * p / 2
        if lattice == "square":
            iu, iv = np.round(u / p), np.round(v / p)
            d = np.hypot(u - p * iu, v - p * iv)
        else:
            rowh = p * np.sqrt(3) / 2
            iv = np.round(v / rowh)
            iu = np.round((u - (iv % 2) * p / 2) / p)
            d = np.hypot(u - p * iu - (iv % 2) * p / 2, v - rowh * iv)
            # The neighbouring row can be nearer; take the closer of the two.
            iv2 = iv + np.sign(v - rowh * iv)
            iu2 = np.round((u - (iv2 % 2) * p / 2) / p)
            d2 = np.hypot(u - p * iu2 - (iv2 % 2) * p / 2, v - rowh * iv2)
            closer = d2 < d
            d = np.where(closer, d2, d)
            iu, iv = np.where(closer, iu2, iu), np.where(closer, iv2, iv)
        gone = missing[iu.astype(int) % 64, iv.astype(int) % 64]
        feat = (d < r) & ~gone
        prof = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1)) ** (0.3 if pattern == "pillars" else 0.1)
        feature = 2 * r
    depth = p * rng.uniform(0.15, 0.5)
    sign = -1.0 if pattern == "holes" else 1.0
    height = np.where(feat, sign * depth * prof, 0).astype(np.float32) + substrate(rng, (h, w), 0.1)
    material = np.full((h, w), rng.uniform(0.6, 1.1), np.float32)
    if pattern == "holes":
        material = np.where(feat, material * 0.5, material).astype(np.float32)
    labels, _ = ndi.label(feat)
    q = {
        "pattern": pattern,
        "lattice": lattice,
        "pitch_nm": round(float(p * px), 3),
        "feature_size_nm": round(float(feature * px), 3),
        "orientation_deg": round(float(np.degrees(-a) % 180), 2),
        "feature_fraction": round(float(feat.mean()), 4),
    }
    return Scene(height, material, feat, labels.astype(np.int32), kind=pattern, quantities=q)
