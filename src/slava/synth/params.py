"""Pixel-size ranges, shifts and seeding shared by every synthetic generator (class ids: ``slava.data.taxonomy``)."""

from __future__ import annotations

import numpy as np

from slava.data.taxonomy import CLASSES
from slava.errors import SlavaError

SHIFTS: tuple[str, ...] = ("noise", "blur", "contrast", "charging", "scale")

# Training range of pixel sizes (nm/px) per class, log-uniform. The ranges
# follow the magnifications at which such samples are usually imaged, so that
# a feature's size in nm is plausible for its class.
PIXEL_SIZE_NM: dict[str, tuple[float, float]] = {
    "biological": (4.0, 50.0),
    "fibres": (5.0, 50.0),
    "films_coated_surfaces": (0.5, 20.0),
    "mems_devices_electrodes": (5.0, 50.0),
    "nanowires": (1.0, 20.0),
    "particles": (0.5, 20.0),
    "patterned_surfaces": (1.0, 20.0),
    "porous_sponges": (0.5, 10.0),
    "powders": (5.0, 50.0),
    "tips": (1.0, 30.0),
}

# Magnification is quoted against a Polaroid 4x5 reference width, the
# convention most SEM vendors print in the data bar.
REFERENCE_WIDTH_MM = 127.0


class SynthError(SlavaError):
    """Bad arguments to the synthetic generator (unknown class, size too small, ...)."""


def check_class(cls: str) -> str:
    """Return ``cls`` if it is a known class id, else raise SynthError naming the valid ones."""
    if cls not in CLASSES:
        raise SynthError(f"unknown class {cls!r}; choose from {', '.join(CLASSES)}")
    return cls


def check_shift(shift: str | None) -> str | None:
    """Return ``shift`` if it is None or a known shift, else raise SynthError."""
    if shift is not None and shift not in SHIFTS:
        raise SynthError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
    return shift


def image_seed(seed: int, index: int) -> int:
    """The per-image seed of image ``index`` in a set made with ``seed`` (stable across processes)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A draw uniform in log space between lo and hi."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_pixel_size(rng: np.random.Generator, cls: str, shift: str | None) -> float:
    """Pixel size in nm/px: inside the class's training range, or outside it for the scale shift."""
    lo, hi = PIXEL_SIZE_NM[cls]
    if shift == "scale":
        # Half below, half above the training range, by a factor 3-8, so that
        # features look too large or too small for their class.
        factor = rng.uniform(3.0, 8.0)
        return lo / factor if rng.random() < 0.5 else hi * factor
    return log_uniform(rng, lo, hi)
