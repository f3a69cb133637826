"""Secondary-electron image formation on a rendered scene, with the instrument's artefacts.

The signal follows the usual SE contrast mechanisms: yield rises with the
local tilt (secant law) and at convex edges (edge effect), recessed regions
lose electrons that cannot escape (a depth term), and a side-mounted detector
shades slopes facing away from it. The instrument then adds defocus, scan-line
jitter, brightness/contrast drift, occasional charging and shot noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from slava.synth.params import log_uniform
from slava.synth.shapes import Scene, smooth_noise


def sample_params(rng: np.random.Generator, shift: str | None) -> dict:
    """Random imaging conditions; a shift pushes its own artefact beyond the training range."""
    p = {
        "secant_power": rng.uniform(0.6, 1.5),
        "edge_gain": rng.uniform(0.1, 1.0),
        "edge_sigma_px": rng.uniform(0.6, 1.6),
        "depth_gain": rng.uniform(0.2, 1.2),
        "depth_sigma_px": rng.uniform(4.0, 20.0),
        "detector_gain": rng.uniform(0.0, 0.5),
        "detector_angle_deg": rng.uniform(0, 360),
        "blur_sigma_px": rng.uniform(0.3, 1.3),
        "dose": log_uniform(rng, 12.0, 400.0),
        "jitter_px": rng.uniform(0.0, 0.8) if rng.random() < 0.5 else 0.0,
        "line_noise": rng.uniform(0.0, 0.04),
        "offset": rng.uniform(0.0, 0.2),
        "gain": rng.uniform(0.55, 1.0),
        "gamma": rng.uniform(0.75, 1.3),
        "drift": rng.uniform(0.0, 0.2),
        "charging": float(rng.uniform(0.1, 0.5)) if rng.random() < 0.12 else 0.0,
    }
    if shift == "noise":
        p["dose"] = log_uniform(rng, 0.4, 2.0)
        p["line_noise"] = rng.uniform(0.04, 0.1)
    elif shift == "blur":
        p["blur_sigma_px"] = rng.uniform(2.5, 4.5)
    elif shift == "contrast":
        p["gain"] = rng.uniform(0.12, 0.3)
        p["offset"] = rng.uniform(0.0, 0.6)
        p["gamma"] = float(rng.choice([rng.uniform(0.35, 0.55), rng.uniform(1.8, 2.6)]))
        p["drift"] = rng.uniform(0.35, 0.6)
    elif shift == "charging":
        p["charging"] = rng.uniform(0.7, 1.2)
    return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in p.items()}


def secondary_electron_signal(scene: Scene, p: dict) -> np.ndarray:
    """The noise-free SE signal of a scene, scaled so its 99.5th percentile is 1."""
    h = scene.height
    hs = ndi.gaussian_filter(h, 0.7)
    gy, gx = np.gradient(hs)
    tilt = (1.0 + gx * gx + gy * gy) ** (p["secant_power"] / 2)
    # The secant law diverges at grazing slopes; real yield saturates a few times above flat.
    tilt = 1.0 + 1.5 * np.tanh((tilt - 1.0) / 1.5)
    curv = -ndi.gaussian_laplace(h, p["edge_sigma_px"])
    edge = np.clip(curv, 0, None)
    edge = edge / (1.0 + edge)
    relief = h - ndi.gaussian_filter(h, p["depth_sigma_px"])
    depth = np.exp(p["depth_gain"] * np.tanh(relief / (1.0 + p["depth_sigma_px"] * 0.5)))
    a = np.radians(p["detector_angle_deg"])
    facing = 1.0 + p["detector_gain"] * np.tanh(gx * np.cos(a) + gy * np.sin(a))
    signal = scene.material * tilt * depth * facing + p["edge_gain"] * edge
    top = float(np.percentile(signal, 99.5))
    return (signal / (top if top > 0 else 1.0)).astype(np.float32)


def _charging(rng, img, mask, strength):
    """Bright halos around objects and bright horizontal streaks trailing to the right."""
    h, w = img.shape
    halo = ndi.gaussian_filter(mask.astype(np.float32), rng.uniform(3.0, 10.0))
    img = img + strength * 0.6 * halo * rng.uniform(0.5, 1.0)
    xs = np.arange(w, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4 + int(6 * strength)))):
        y, x0 = int(rng.integers(0, h)), float(rng.uniform(0, w))
        thick = int(rng.integers(1, 4))
        tail = np.where(xs >= x0, np.exp(-(xs - x0) / rng.uniform(0.1, 0.8) / w), 0.0)
        img[y : y + thick] += strength * rng.uniform(0.3, 1.0) * tail
    return img


def form_image(scene: Scene, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Render a scene into an 8-bit SEM image region (uint8 [H, W]) under imaging parameters ``p``."""
    h, w = scene.height.shape
    img = secondary_electron_signal(scene, p)
    img = ndi.gaussian_filter(img, p["blur_sigma_px"])
    img = np.clip(p["offset"] + p["gain"] * img, 1e-4, None) ** p["gamma"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a)) * 2
    img = img * (1 + p["drift"] * (0.6 * ramp + 0.4 * smooth_noise(rng, (h, w), max(h, w) / 4)))
    if p["charging"] > 0:
        img = _charging(rng, img, scene.mask, p["charging"])
    img = img * (1 + p["line_noise"] * rng.standard_normal((h, 1)).astype(np.float32))
    lam = np.clip(img, 0, 1.2) * p["dose"]
    img = rng.poisson(lam).astype(np.float32) / p["dose"]
    if p["jitter_px"] > 0:
        shifts = np.round(rng.normal(0, p["jitter_px"], h)).astype(int)
        cols = np.clip(np.arange(w)[None, :] - shifts[:, None], 0, w - 1)
        img = img[np.arange(h)[:, None], cols]
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
