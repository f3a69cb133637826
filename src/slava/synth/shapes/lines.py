"""Elongated objects: fibre mats and nanowires, drawn as round tubes along centrelines."""

from __future__ import annotations

import numpy as np

from slava.synth.shapes import Scene, draw_tubes, feature_size_nm, substrate


def _curve(rng, start, angle, length, step, wiggle, persistence):
    """A smooth random-walk centreline: heading changes are low-pass filtered white noise."""
    n = max(2, int(length / step))
    turn = rng.normal(0, wiggle, n)
    for i in range(1, n):
        turn[i] = persistence * turn[i - 1] + (1 - persistence) * turn[i]
    heading = angle + np.cumsum(turn)
    pts = np.empty((n + 1, 2))
    pts[0] = start
    pts[1:, 0] = start[0] + np.cumsum(step * np.cos(heading))
    pts[1:, 1] = start[1] + np.cumsum(step * np.sin(heading))
    return pts


def _orientation(paths, h, w, visible_ids):
    """Axial mean direction (deg in [0, 180), y up) and order (0 isotropic … 1 aligned) of visible segments."""
    c = s = tot = 0.0
    for i in visible_ids:
        p = paths[i - 1]
        d = np.diff(p, axis=0)
        mid = (p[1:] + p[:-1]) / 2
        keep = (mid[:, 0] >= 0) & (mid[:, 0] < w) & (mid[:, 1] >= 0) & (mid[:, 1] < h)
        d = d[keep]
        if not len(d):
            continue
        a = np.arctan2(-d[:, 1], d[:, 0])
        ln = np.hypot(d[:, 0], d[:, 1])
        c += float((ln * np.cos(2 * a)).sum())
        s += float((ln * np.sin(2 * a)).sum())
        tot += float(ln.sum())
    if tot == 0:
        return 0.0, 0.0
    return float(np.degrees(np.arctan2(s, c) / 2) % 180), float(np.hypot(c, s) / tot)


def _tube_quantities(paths, widths_px, labels, h, w, px, count_key):
    visible = [int(i) for i in np.unique(labels) if i > 0]
    widths = [widths_px[i - 1] * px for i in visible]
    deg, order = _orientation(paths, h, w, visible)
    return {
        count_key: len(visible),
        "fibre_widths_nm": [round(float(x), 3) for x in widths],
        "mean_width_nm": round(float(np.mean(widths)), 3) if widths else 0.0,
        "orientation_deg": round(deg, 2),
        "orientation_order": round(order, 3),
    }


def fibres(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """A random (or partly aligned) mat of long curved fibres stacked in depth.

    ``fibre_count`` counts fibres with at least one visible pixel in the image
    region; widths are those fibres' diameters; orientation uses the visible
    centreline segments.
    """
    width_nm = feature_size_nm(rng, px, (50.0, 5000.0), (4.0, 26.0))
    spread = rng.uniform(0.1, 0.45)
    n = int(rng.integers(8, 45))
    aligned = rng.random() < 0.3
    base_angle = rng.uniform(0, np.pi)
    wiggle = rng.uniform(0.02, 0.12)
    paths, widths, bases = [], [], []
    diag = np.hypot(h, w)
    for i in range(n):
        wd = float(np.clip(width_nm / px * np.exp(spread * rng.standard_normal()), 2.0, 40.0))
        ang = base_angle + rng.normal(0, 0.25) if aligned else rng.uniform(0, 2 * np.pi)
        centre = rng.uniform([0, 0], [w, h])
        start = centre - 0.75 * diag * np.array([np.cos(ang), np.sin(ang)])
        paths.append(_curve(rng, start, ang, 1.5 * diag, 6.0, wiggle, rng.uniform(0.8, 0.97)))
        widths.append(wd)
        bases.append(i * rng.uniform(0.3, 1.0))
    height, labels = draw_tubes((h, w), paths, widths, bases)
    mask = labels > 0
    floor = -rng.uniform(5.0, 20.0)
    height = np.where(mask, height, floor + substrate(rng, (h, w), 0.5)).astype(np.float32)
    material = np.where(mask, rng.uniform(0.8, 1.3), rng.uniform(0.1, 0.4)).astype(np.float32)
    q = _tube_quantities(paths, widths, labels, h, w, px, "fibre_count")
    q["arrangement"] = "aligned" if aligned else "random"
    q["coverage"] = round(float(mask.mean()), 4)
    return Scene(height, material, mask, labels, kind=q["arrangement"], quantities=q)


def nanowires(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """Thin straight or slightly bent wires: lying at random, combed into alignment, or standing (tilted view).

    Standing wires carry a bright catalyst droplet at the tip. ``fibre_count``
    counts wires with a visible pixel in the image region.
    """
    kind = str(rng.choice(["lying", "aligned", "standing"], p=[0.45, 0.2, 0.35]))
    width_nm = feature_size_nm(rng, px, (8.0, 300.0), (2.5, 12.0))
    wd0 = width_nm / px
    n = int(rng.integers(4, 60 if kind == "standing" else 35))
    base_angle = rng.uniform(0, np.pi)
    if kind == "standing":
        base_angle = -np.pi / 2 + rng.normal(0, 0.15)  # tilted view: wires rise up the screen
    paths, widths, bases = [], [], []
    for i in range(n):
        wd = float(np.clip(wd0 * np.exp(rng.uniform(-0.2, 0.2)), 1.5, 30.0))
        length = wd * rng.uniform(15, 80)
        if kind == "lying":
            ang = rng.uniform(0, 2 * np.pi)
        else:
            ang = base_angle + rng.normal(0, 0.08 if kind == "aligned" else 0.12)
        start = rng.uniform([-0.2 * w, 0], [1.2 * w, 1.3 * h])
        paths.append(_curve(rng, start, ang, length, 3.0, rng.uniform(0.0, 0.02), 0.95))
        widths.append(wd)
        bases.append(0.0)
    if kind == "standing":
        # Wires rooted lower on the screen are nearer the detector and hide those behind.
        order = np.argsort([p[0, 1] for p in paths])
        paths = [paths[k] for k in order]
        widths = [widths[k] for k in order]
        bases = [float(p[0, 1]) * 0.2 for p in paths]
    height, labels = draw_tubes((h, w), paths, widths, bases)
    mask = labels > 0
    sub = substrate(rng, (h, w), rng.uniform(0.1, 0.8)) - (3.0 if kind == "standing" else 0.0)
    height = np.where(mask, height + 0.5, sub).astype(np.float32)
    material = np.where(mask, rng.uniform(0.9, 1.5), rng.uniform(0.3, 0.8)).astype(np.float32)
    if kind == "standing":
        for p, wd, b in zip(paths, widths, bases):
            tx, ty = int(round(p[-1, 0])), int(round(p[-1, 1]))
            rr = max(1, int(round(wd * 0.7)))
            ya, yb, xa, xb = max(ty - rr, 0), min(ty + rr + 1, h), max(tx - rr, 0), min(tx + rr + 1, w)
            if ya < yb and xa < xb:
                material[ya:yb, xa:xb] = np.where(mask[ya:yb, xa:xb], 1.8, material[ya:yb, xa:xb])
    q = _tube_quantities(paths, widths, labels, h, w, px, "fibre_count")
    q["arrangement"] = kind
    lengths = [np.hypot(*(paths[i - 1][-1] - paths[i - 1][0])) * px for i in np.unique(labels) if i > 0]
    q["mean_length_nm"] = round(float(np.mean(lengths)), 3) if lengths else 0.0
    q["coverage"] = round(float(mask.mean()), 4)
    return Scene(height, material, mask, labels, kind=kind, quantities=q)
