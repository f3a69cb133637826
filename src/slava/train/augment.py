"""Training on degraded copies: the artefacts of ``slava.artefacts`` that a micrograph shows from one session to the next.

Real micrographs differ in dose, focus, detector response, charging, scan,
magnification, JPEG and bit depth far more than any one synthetic or curated
set, and a student trained only on the set's own variation collapses under those shifts.
Each training image gets ``variants - 1`` degraded copies besides the clean one,
each seeded by (recipe seed, image, variant), so the frozen tower's output can
be cached per copy; which copy an example sees is drawn per (stage, epoch) from
the seeded data order, so a resumed run replays the same inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from slava.artefacts import ARTEFACTS, apply


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


def degrade(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """A degraded copy of a model-input image [1, S, S] in [0, 1]: each artefact of ``slava.artefacts``
    with chance 0.4 at a strength uniform in [0, 1], at least one, in the instrument's order."""
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(ARTEFACTS)) < 0.4
    if not chosen.any():
        chosen[rng.integers(len(ARTEFACTS))] = True
    img = pixels[0].numpy()
    for name, on in zip(ARTEFACTS, chosen):
        if on:
            img = apply(img, name, float(rng.uniform()), int(rng.integers(2**63)))
    return torch.from_numpy(img)[None]
