"""What an instrument does to a micrograph from one session to the next, as seeded image functions.

Real images differ from a training set in dose and dwell time (shot noise),
focus and stigmation, detector gain, offset and gamma, charging, scan jitter
and drift, magnification, JPEG re-saves and the bit depth a detector writes.
Each artefact here is a pure function ``(rng, img, strength) -> img`` on a grey
float image [H, W] in [0, 1] and keeps its shape; ``strength`` in [0, 1] runs
from barely visible to the worst an operator would still save. Training draws
strengths at random (``slava.train.augment``); evaluation applies one artefact
at a fixed severity (``shifted``) to any image, synthetic or real.

``magnification`` shows another field (its counts are not the original's);
``rescale`` changes only the sampling and returns the pixel size that goes with
the new image, so counts and sizes in nm stay what they were.
"""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from slava.errors import SlavaError

SEVERITIES: dict[str, float] = {"moderate": 0.5, "strong": 1.0}
"""Evaluation severities as artefact strengths."""


class ArtefactError(SlavaError):
    """An unknown artefact or severity, or a strength outside [0, 1]."""


def _lerp(lo: float, hi: float, s: float) -> float:
    return lo + (hi - lo) * s


def _loglerp(lo: float, hi: float, s: float) -> float:
    return math.exp(_lerp(math.log(lo), math.log(hi), s))


def noise(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Shot noise at a dose from 200 down to 1 electron per pixel at full white, scan-line gain noise and read noise."""
    h = img.shape[0]
    img = img * (1 + 0.1 * strength * rng.standard_normal((h, 1)))
    dose = _loglerp(200.0, 1.0, strength)
    img = rng.poisson(np.clip(img, 0, 1.2) * dose) / dose
    return img + 0.05 * strength * rng.standard_normal(img.shape)


def defocus(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """A Gaussian probe of width 0.5-3.5 px, stretched along a random axis by astigmatism of up to 60 %."""
    sigma = _lerp(0.5, 3.5, strength)
    astig = rng.uniform(0.0, 0.6)
    sa, sb = sigma * (1 + astig), sigma / (1 + astig)
    angle = rng.uniform(0, math.pi)
    r = int(math.ceil(3 * sa))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    kernel = np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
    return ndi.convolve(img, kernel / kernel.sum(), mode="reflect")


def contrast(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Detector gain and offset, gamma, and a brightness gradient across the field (drift, uneven detector)."""
    h, w = img.shape
    gain = _loglerp(1.0, 0.15, strength * rng.uniform(0.5, 1.0))
    offset = 0.5 * strength * rng.uniform(0.0, 1.0)
    gamma = _loglerp(1.0, 2.8, strength * rng.uniform(0.5, 1.0)) ** rng.choice([-1.0, 1.0])
    img = np.clip(offset + gain * img, 1e-4, None) ** gamma
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = ((xx / w - 0.5) * math.cos(a) + (yy / h - 0.5) * math.sin(a)) * 2
    return img * (1 + 0.6 * strength * ramp)


def charging(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Bright halos around bright features and bright streaks trailing along the scan lines."""
    h, w = img.shape
    s = _lerp(0.1, 1.2, strength)
    bright = (img > np.quantile(img, rng.uniform(0.6, 0.9))).astype(np.float64)
    img = img + s * 0.6 * ndi.gaussian_filter(bright, rng.uniform(2.0, 6.0)) * rng.uniform(0.5, 1.0)
    xs = np.arange(w, dtype=np.float64)
    for _ in range(int(rng.integers(1, 4 + int(8 * s)))):
        y, x0 = int(rng.integers(0, h)), float(rng.uniform(0, w))
        tail = np.where(xs >= x0, np.exp(-(xs - x0) / rng.uniform(0.1, 0.8) / w), 0.0)
        img[y : y + int(rng.integers(1, 3))] += s * rng.uniform(0.3, 1.0) * tail
    return img


def scan(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Scan-line jitter (each line displaced by up to ~2 px) and stage drift shearing the frame by up to 5 % of its width."""
    h, w = img.shape
    jitter = rng.normal(0.0, 1.5 * strength, h)
    drift = rng.uniform(-0.05, 0.05) * w * strength * np.linspace(-0.5, 0.5, h)
    cols = np.arange(w)[None, :] - (jitter + drift)[:, None]
    rows = np.broadcast_to(np.arange(h)[:, None], cols.shape).astype(np.float64)
    return ndi.map_coordinates(img, [rows, cols], order=1, mode="reflect")


def magnification(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Another magnification on the same field size: zoom into a random crop, or shrink and fill the field by mirroring.

    The zoom is up to 6× either way. Unlike ``rescale`` this keeps the shape
    and so the field of view changes: what a model input sees at another
    magnification. Counts of the new field are not those of the old.
    """
    h, w = img.shape
    zoom = _loglerp(1.0, 6.0, strength * rng.uniform(0.3, 1.0)) ** rng.choice([-1.0, 1.0])
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if zoom >= 1:
        ch, cw = max(4, round(h / zoom)), max(4, round(w / zoom))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out = F.interpolate(t[..., y : y + ch, x : x + cw], size=(h, w), mode="bicubic", align_corners=False)
        return out[0, 0].numpy().astype(np.float64)
    ch, cw = max(4, round(h * zoom)), max(4, round(w * zoom))
    small = F.interpolate(t, size=(ch, cw), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    tiled = np.concatenate([small, small[::-1]], 0)
    tiled = np.concatenate([tiled, tiled[:, ::-1]], 1)
    tiled = np.tile(tiled, (-(-h // (2 * ch)) + 1, -(-w // (2 * cw)) + 1))
    y, x = int(rng.integers(0, ch)), int(rng.integers(0, cw))
    return tiled[y : y + h, x : x + w].astype(np.float64)


def jpeg(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """A JPEG re-save at quality 95 down to 50 (8-bit, as every JPEG is)."""
    from PIL import Image

    quality = round(_lerp(95, 50, strength * rng.uniform(0.5, 1.0)))
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float64) / 255.0


def bit_depth(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """The image as a 16-bit detector writes it, using only part of the range, and read back by its type's range.

    Many detectors fill 10-14 of the 16 bits, so a 16-bit file read by its
    type's range (as ``slava.io`` reads integers) is dark and flat beside the
    8-bit export of the same frame. At strength 0 the image is only quantised to 8 bits.
    """
    if strength <= 0:
        return np.round(np.clip(img, 0, 1) * 255) / 255.0
    bits = _lerp(16.0, 10.0, strength * rng.uniform(0.5, 1.0))
    span = 2.0**bits - 1
    base = rng.uniform(0.0, 65535.0 - span)
    return np.round(base + np.clip(img, 0, 1) * span) / 65535.0


Artefact = Callable[[np.random.Generator, np.ndarray, float], np.ndarray]

ARTEFACTS: dict[str, Artefact] = {
    "magnification": magnification,
    "defocus": defocus,
    "contrast": contrast,
    "charging": charging,
    "scan": scan,
    "noise": noise,
    "bit_depth": bit_depth,
    "jpeg": jpeg,
}
"""Every artefact, in the order the instrument and the file apply them."""


def apply(img: np.ndarray, name: str, strength: float, seed: int) -> np.ndarray:
    """``img`` [H, W] in [0, 1] under artefact ``name`` at ``strength``, seeded; float32 in [0, 1], same shape."""
    if name not in ARTEFACTS:
        raise ArtefactError(f"unknown artefact {name!r}; known: {', '.join(ARTEFACTS)}")
    if not 0.0 <= strength <= 1.0:
        raise ArtefactError(f"artefact strength must be in [0, 1], got {strength}")
    out = ARTEFACTS[name](np.random.default_rng(seed), np.asarray(img, dtype=np.float64), strength)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def shifted(img: np.ndarray, name: str, severity: str, seed: int) -> np.ndarray:
    """``img`` under one artefact at an evaluation severity (``SEVERITIES``)."""
    if severity not in SEVERITIES:
        raise ArtefactError(f"unknown severity {severity!r}; known: {', '.join(SEVERITIES)}")
    return apply(img, name, SEVERITIES[severity], seed)


def rescale(img: np.ndarray, pixel_size_nm: float | None, zoom: float) -> tuple[np.ndarray, float | None]:
    """The whole field resampled ``zoom`` times as many pixels a side, with the pixel size that goes with it.

    Every object stays in the field and keeps its size in nm, so counts and
    sizes measured on the result match the original's.
    """
    if not zoom > 0:
        raise ArtefactError(f"zoom must be positive, got {zoom}")
    h, w = img.shape
    size = (max(1, round(h * zoom)), max(1, round(w * zoom)))
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=size, mode="bilinear", antialias=zoom < 1, align_corners=False)[0, 0].numpy()
    scale = w / size[1]
    return np.clip(out, 0.0, 1.0), (pixel_size_nm * scale if pixel_size_nm is not None else None)
