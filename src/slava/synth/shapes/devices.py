"""Fabricated structures: MEMS devices and electrodes, AFM/STM tips."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from slava.synth.shapes import Scene, feature_size_nm, smooth_noise, substrate


def _comb(rng, m, fw, gap):
    """Interdigitated comb drive: two backbones with interleaved fingers; returns finger count."""
    s = m.shape[0]
    y_top = int(rng.uniform(0.0, 0.3) * s)
    y_bot = int(rng.uniform(0.7, 1.0) * s)
    bb = max(int(fw * rng.uniform(1.5, 4)), 3)
    m[max(y_top - bb, 0) : y_top, :] = 1
    m[y_bot : y_bot + bb, :] = 1
    overlap = rng.uniform(0.3, 0.8)
    reach = int((y_bot - y_top) * (0.5 + overlap / 2))
    x = int(rng.uniform(0, fw + gap))
    n, top = 0, True
    while x + fw <= s:
        if top:
            m[y_top : y_top + reach, x : x + int(fw)] = 1
        else:
            m[max(y_bot - reach, 0) : y_bot, x : x + int(fw)] = 1
        n += 1
        top = not top
        x += int(round(fw + gap))
    return n


def _lines(rng, m, fw, gap):
    """Parallel electrode lines ending on a bus or pads; returns line count."""
    s = m.shape[0]
    y0, y1 = int(rng.uniform(0, 0.4) * s), int(rng.uniform(0.6, 1.0) * s)
    x, n = int(rng.uniform(0, gap)), 0
    while x + fw <= s:
        m[y0:y1, x : x + int(fw)] = 1
        n += 1
        x += int(round(fw + gap))
    if rng.random() < 0.6:
        m[max(y1 - int(2 * fw), 0) : y1 + int(3 * fw), :] = 1
    return n


def _pads(rng, m, fw, gap):
    """Bond pads with traces leading off them; returns pad count."""
    s = m.shape[0]
    n = int(rng.integers(1, 5))
    side = int(rng.uniform(0.15, 0.35) * s)
    for _ in range(n):
        x, y = rng.integers(0, max(s - side, 1), 2)
        m[y : y + side, x : x + side] = 1
        tw = max(int(fw), 2)
        if rng.random() < 0.5:
            m[y + side // 2 : y + side // 2 + tw, x + side :] = 1
        else:
            m[y + side :, x + side // 2 : x + side // 2 + tw] = 1
    return n


def _spring(rng, m, fw, gap):
    """A serpentine suspension spring with an anchor; returns number of meander turns."""
    s = m.shape[0]
    x0, x1 = int(rng.uniform(0.05, 0.3) * s), int(rng.uniform(0.7, 0.95) * s)
    y, n = int(rng.uniform(0, 0.2) * s), 0
    step = int(round(fw + gap))
    while y + fw <= s * 0.9:
        m[y : y + int(fw), x0:x1] = 1
        side = x1 - int(fw) if n % 2 == 0 else x0
        m[y : y + step + int(fw), side : side + int(fw)] = 1
        y += step
        n += 1
    return n


def _plate(rng, m, fw, gap):
    """A released proof mass perforated by a square grid of etch holes; returns hole count."""
    s = m.shape[0]
    x0, y0 = rng.integers(0, s // 3, 2)
    x1, y1 = s - rng.integers(0, s // 3, 2)
    m[y0:y1, x0:x1] = 1
    hole, step, n = max(int(gap), 2), max(int(gap + fw * 2), 4), 0
    for yy in range(y0 + step // 2, y1 - hole, step):
        for xx in range(x0 + step // 2, x1 - hole, step):
            m[yy : yy + hole, xx : xx + hole] = 0
            n += 1
    return n


_ELEMENTS = {"comb": _comb, "lines": _lines, "pads": _pads, "spring": _spring, "plate": _plate}


def mems(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """Rectilinear MEMS structures and electrodes: combs, lines, pads, springs, perforated plates, with shadows.

    ``line_width_nm`` and ``gap_nm`` are the drawn finger/line width and spacing
    of the main element; ``element_count`` counts its repeated features.
    """
    kind = str(rng.choice(list(_ELEMENTS)))
    fw = feature_size_nm(rng, px, (200.0, 20000.0), (3.0, 18.0)) / px
    gap = fw * rng.uniform(0.6, 2.5)
    s = max(h, w)
    m = np.zeros((s, s), np.uint8)
    count = _ELEMENTS[kind](rng, m, fw, gap)
    if rng.random() < 0.4:
        extra = str(rng.choice(["pads", "lines"]))
        m2 = np.zeros_like(m)
        _ELEMENTS[extra](rng, m2, fw * rng.uniform(1, 3), gap * rng.uniform(1, 3))
        cut = int(rng.uniform(0.2, 0.8) * s)
        m[cut:] = np.maximum(m[cut:], m2[cut:])
    if rng.random() < 0.5:
        m = m.T
    mask = m[:h, :w].astype(bool)
    struct_h = fw * rng.uniform(0.6, 2.0)
    inner = ndi.distance_transform_edt(mask).astype(np.float32)
    height = struct_h * np.tanh(inner / 1.2) + substrate(rng, (h, w), 0.2)
    # Released structures stand over a dark trench; others sit on the wafer.
    sub_mat = rng.uniform(0.2, 0.8)
    dx, dy = rng.integers(1, max(2, int(struct_h)) + 1, 2)
    shadow = np.zeros_like(mask)
    shadow[dy:, dx:] = mask[:-dy, :-dx]
    shadow &= ~mask
    material = np.where(mask, rng.uniform(0.8, 1.5), sub_mat * np.where(shadow, rng.uniform(0.4, 0.8), 1.0))
    material = (material * (1 + 0.05 * smooth_noise(rng, (h, w), 2.0))).astype(np.float32)
    q = {
        "structure": kind,
        "line_width_nm": round(float(int(fw) * px), 3),
        "gap_nm": round(float((int(round(fw + gap)) - int(fw)) * px), 3),
        "element_count": int(count),
        "feature_fraction": round(float(mask.mean()), 4),
    }
    return Scene(height.astype(np.float32), material, mask, None, kind=kind, quantities=q)


def tips(rng: np.random.Generator, h: int, w: int, px: float) -> Scene:
    """A scanning-probe tip seen from the side: sphere-capped cone, pyramid, or etched STM wire.

    ``apex_radius_nm`` is the radius of the rounded apex; ``apex_xy_px`` its
    position in the image; ``orientation_deg`` the direction from apex to
    shank (y up).
    """
    kind = str(rng.choice(["cone", "pyramid", "etched_wire"], p=[0.45, 0.3, 0.25]))
    R = feature_size_nm(rng, px, (2.0, 300.0), (1.0, 25.0)) / px
    alpha = np.radians(rng.uniform(8, 35) if kind != "etched_wire" else rng.uniform(4, 15))
    ang = rng.normal(np.pi / 2, 0.6) if rng.random() < 0.7 else rng.uniform(0, 2 * np.pi)
    ax, ay = np.cos(ang), -np.sin(ang)  # unit vector apex -> shank, image coordinates
    apex = rng.uniform([0.25 * w, 0.25 * h], [0.75 * w, 0.75 * h])
    # Put the apex so the shank runs off the frame: move it towards the side opposite the shank.
    apex = apex - np.array([ax, ay]) * rng.uniform(0, 0.2) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - apex[0]) * ax + (yy - apex[1]) * ay  # u = 0 at the very end of the apex
    v = np.abs(-(xx - apex[0]) * ay + (yy - apex[1]) * ax)
    ut = R * (1 - np.sin(alpha))
    if kind == "etched_wire":
        taper = R * np.cos(alpha) + np.maximum(u - ut, 0) ** 0.8 * np.tan(alpha) * 2.2
        taper += 0.04 * R * smooth_noise(rng, (h, w), 4.0) * np.sqrt(np.maximum(u, 0) / R)
    else:
        taper = R * np.cos(alpha) + np.maximum(u - ut, 0) * np.tan(alpha)
    cap = np.sqrt(np.clip(R * R - (R - u) ** 2, 0, None))
    r = np.where(u < ut, cap, taper)
    body = (v < r) & (u > 0)
    if kind == "pyramid":
        z = np.where(body, r - v, 0.0)
    else:
        z = np.where(body, np.sqrt(np.clip(r * r - v * v, 0, None)), 0.0)
    floor = -float(min(h, w)) * rng.uniform(0.1, 0.5)
    height = np.where(body, z, floor + substrate(rng, (h, w), rng.uniform(0.2, 2.0))).astype(np.float32)
    material = np.where(body, rng.uniform(0.8, 1.3), rng.uniform(0.05, 0.5)).astype(np.float32)
    q = {
        "tip_kind": kind,
        "apex_radius_nm": round(float(R * px), 3),
        "cone_half_angle_deg": round(float(np.degrees(alpha)), 2),
        "apex_xy_px": [round(float(apex[0]), 2), round(float(apex[1]), 2)],
        "orientation_deg": round(float(np.degrees(ang) % 360), 2),
        "apex_in_image": bool(0 <= apex[0] < w and 0 <= apex[1] < h),
    }
    return Scene(height, material, body, None, kind=kind, quantities=q)
