"""Photometric and scale augmentation: the SEM artefacts a micrograph shows from one session to the next.

Real micrographs differ in dose (shot noise), focus, brightness/contrast/gamma,
charging and magnification far more than any one synthetic or curated set, and
a student trained only on the set's own variation collapses under those shifts.
Each training image gets ``variants - 1`` degraded copies besides the clean one,
each seeded by (recipe seed, image, variant), so the frozen tower's output can
be cached per copy; which copy an example sees is drawn per (stage, epoch) from
the seeded data order, so a resumed run replays the same inputs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi


@dataclass
class AugmentConfig:
    """Degraded copies of the training images (validation always sees clean ones)."""

    enabled: bool = False
    """Train on degraded copies as well as the clean image."""
    variants: int = 6
    """Copies per image, the clean one included (each degraded copy is cached like the clean one)."""
    probability: float = 0.5
    """Chance that an example sees a degraded copy (uniform among them) rather than the clean image."""


def variant_seed(seed: int, image: str, variant: int) -> int:
    """A seed fixed by (recipe seed, image key, variant), equal in every process and on resume."""
    digest = hashlib.sha256(f"{seed}\0{image}\0{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def choose_variants(cfg: AugmentConfig, order_seed: int, n: int) -> list[int]:
    """The copy each of ``n`` examples sees in one epoch (0 = clean), drawn from the epoch's order seed."""
    if not cfg.enabled or cfg.variants < 2:
        return [0] * n
    gen = torch.Generator().manual_seed((order_seed * 31 + 17) % 2**63)
    degraded = torch.rand(n, generator=gen) < cfg.probability
    which = torch.randint(1, cfg.variants, (n,), generator=gen)
    return torch.where(degraded, which, torch.zeros_like(which)).tolist()


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _rescale(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Another magnification: zoom into a random crop, or shrink and fill the field by mirroring."""
    s = img.shape[0]
    t = torch.from_numpy(img)[None, None]
    zoom = _log_uniform(rng, 1 / 6, 6)
    if zoom >= 1:
        c = max(4, round(s / zoom))
        y, x = (int(v) for v in rng.integers(0, s - c + 1, 2))
        out = F.interpolate(t[..., y : y + c, x : x + c], size=(s, s), mode="bicubic", align_corners=False)
    else:
        c = max(4, round(s * zoom))
        small = F.interpolate(t, size=(c, c), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
        reps = -(-s // c) + 1
        tiled = np.tile(np.concatenate([small, small[::-1]], 0), (reps, 1))
        tiled = np.tile(np.concatenate([tiled, tiled[:, ::-1]], 1), (1, reps))
        y, x = (int(v) for v in rng.integers(0, c, 2))
        return tiled[y : y + s, x : x + s]
    return out[0, 0].numpy()


def _contrast(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Detector gain/offset and gamma, and a brightness gradient across the field (drift, uneven detector)."""
    h, w = img.shape
    img = np.clip(rng.uniform(0.0, 0.5) + _log_uniform(rng, 0.1, 1.2) * img, 1e-4, None) ** _log_uniform(rng, 0.35, 2.8)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a)) * 2
    return img * (1 + rng.uniform(0.0, 0.6) * ramp)


def _charging(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Bright halos around bright features and bright horizontal streaks trailing along the scan."""
    h, w = img.shape
    strength = rng.uniform(0.3, 1.2)
    bright = (img > np.quantile(img, rng.uniform(0.6, 0.9))).astype(np.float32)
    img = img + strength * 0.6 * ndi.gaussian_filter(bright, rng.uniform(2.0, 6.0)) * rng.uniform(0.5, 1.0)
    xs = np.arange(w, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4 + int(8 * strength)))):
        y, x0 = int(rng.integers(0, h)), float(rng.uniform(0, w))
        tail = np.where(xs >= x0, np.exp(-(xs - x0) / rng.uniform(0.1, 0.8) / w), 0.0)
        img[y : y + int(rng.integers(1, 3))] += strength * rng.uniform(0.3, 1.0) * tail
    return img


def _noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Shot noise at a random dose (electrons per pixel at full white), scan-line gain noise, detector read noise."""
    h = img.shape[0]
    img = img * (1 + rng.uniform(0.0, 0.1) * rng.standard_normal((h, 1)))
    dose = _log_uniform(rng, 1.0, 200.0)
    img = rng.poisson(np.clip(img, 0, 1.2) * dose) / dose
    return img + rng.uniform(0.0, 0.05) * rng.standard_normal(img.shape)


# In the order the instrument applies them: field of view, focus, detector response, charging, detection.
_ARTEFACTS = (
    _rescale,
    lambda rng, img: ndi.gaussian_filter(img, rng.uniform(0.7, 3.5)),  # defocus
    _contrast,
    _charging,
    _noise,
)


def degrade(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """A degraded copy of a model-input image [1, S, S] in [0, 1]: each artefact with chance 0.4, at least one."""
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(_ARTEFACTS)) < 0.4
    if not chosen.any():
        chosen[rng.integers(len(_ARTEFACTS))] = True
    img = pixels[0].numpy().astype(np.float64)
    for artefact, on in zip(_ARTEFACTS, chosen):
        if on:
            img = artefact(rng, img)
    return torch.from_numpy(np.clip(img, 0.0, 1.0).astype(np.float32))[None]
