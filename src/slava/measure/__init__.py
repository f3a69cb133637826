"""Classical image analysis that answers "how many / how big" for one micrograph.

``measure(micrograph)`` returns a ``Measurements`` record; lengths are in nm
where the pixel size is known and in micrograph pixels otherwise (``unit``).
Large images are analysed at ≤ 512 px on the long side and the sizes scaled
back, so one call takes milliseconds.

Cost: ask only for the kinds you need. The kinds share the intermediate
images (the smoothed bright phase, its distance transform and skeleton), each
made the first time a kind asks for it, so kinds together cost less than the
sum of their costs alone. CPU time per 256 px synthetic image on one core
(``bench/bench_measure.py`` measures it in every run)::

    all kinds (default)        ~33 ms
    particles + texture        ~20 ms   (screening: counts, sizes, texture)
    particles                  ~19 ms
    fibres                     ~14 ms
    pores                       ~7 ms
    texture, periodicity     ~2.5 ms each (no thresholding needed)
"""

from __future__ import annotations

import numpy as np

from slava.errors import SlavaError
from slava.io.micrograph import Micrograph
from slava.measure.fibres import measure_fibres
from slava.measure.particles import PARTICLE_METHODS, measure_particles
from slava.measure.periodicity import measure_periodicity
from slava.measure.pores import measure_pores
from slava.measure.prepare import prepare
from slava.measure.record import Measurements
from slava.measure.texture import measure_texture

KINDS = ("particles", "fibres", "pores", "texture", "periodicity")
"""Every measurement ``measure`` knows, in the order it runs them."""

NOISY = 0.15
"""Pixel noise (share of the stretched grey range) above which counts get a warning note.

Every clean image of the real sets reads at most 0.11; at a dose of one
electron a pixel they read 0.16–0.49, and faint particles a few pixels wide
are then lost in the noise (an honest count of them is low)."""

__all__ = ["KINDS", "PARTICLE_METHODS", "Measurements", "MeasureError", "measure"]


class MeasureError(SlavaError):
    """A measurement was asked for something it cannot do (unknown kind, empty image)."""


def measure(micrograph: Micrograph | np.ndarray, kinds: tuple[str, ...] | list[str] = KINDS,
            particle_method: str = "auto") -> Measurements:
    """Measure particles, fibres, pores, texture and periodicity of one micrograph.

    ``micrograph`` is a ``Micrograph`` (data bar already cropped) or a raw
    grey array, which goes through ``slava.io.micrograph_from_array`` first
    so its data bar is cropped the same way. Only the kinds asked for are
    filled; the rest stay None. Every kind answers on any image — whether
    the answer means anything (particles in a fibre mat) is for the caller
    to judge from the class; ``notes`` flags the obvious mismatches.
    ``particle_method`` says how particles are found
    (``slava.measure.particles.PARTICLE_METHODS``): "contrast" for particles
    on a support, as in HAADF-STEM of catalysts.
    """
    if particle_method not in PARTICLE_METHODS:
        raise MeasureError(f"unknown particle method {particle_method!r}; choose from {', '.join(PARTICLE_METHODS)}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise MeasureError(f"unknown measurement kind(s) {unknown}; known: {list(KINDS)}")
    if not isinstance(micrograph, Micrograph):
        from slava.io import micrograph_from_array

        micrograph = micrograph_from_array(micrograph)
    pixels = np.asarray(micrograph.pixels, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 16:
        raise MeasureError(f"need a grey image of at least 16×16 pixels, got shape {pixels.shape}")
    size = micrograph.pixel_size_nm if micrograph.pixel_size_nm and micrograph.pixel_size_nm > 0 else None
    notes: list[str] = []
    if size is None:
        notes.append("no pixel size: sizes in px")
    result = Measurements(
        width_px=int(pixels.shape[1]),
        height_px=int(pixels.shape[0]),
        pixel_size_nm=size,
        unit="px" if size is None else "nm",
        notes=notes,
        instrument=micrograph.instrument.to_dict() if micrograph.instrument is not None else None,
    )
    prep = prepare(pixels)
    if prep.scale > 1:
        notes.append(f"analysed at 1/{prep.scale:g} resolution; features under {2 * prep.scale:g} px are missed")
    if {"particles", "fibres", "pores"} & set(kinds) and prep.noise > NOISY:
        notes.append(f"very noisy image (pixel noise {prep.noise:.0%} of the grey range, smoothed by "
                     f"{prep.blur:.1f} px): faint objects a few pixels wide are lost in it, so counts may be low")
    if micrograph.masked is not None:
        notes.append("a data band inside the frame is masked; particles touching it are left out like edge-cut ones")
        prep.invalid = _analysis_mask(~micrograph.valid, prep.flat.shape)
    if "particles" in kinds:
        result.particles = measure_particles(prep, size, notes, particle_method)
    if "fibres" in kinds:
        result.fibres = measure_fibres(prep, size, notes)
    if "pores" in kinds:
        result.pores = measure_pores(prep, size, notes)
    if "texture" in kinds:
        result.texture = measure_texture(pixels, prep)
    if "periodicity" in kinds:
        result.periodicity = measure_periodicity(prep, size, notes)
    return result


def _analysis_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A micrograph-pixel mask at analysis resolution (a block is masked when any pixel in it is)."""
    factor_y = int(np.ceil(mask.shape[0] / shape[0]))
    factor_x = int(np.ceil(mask.shape[1] / shape[1]))
    padded = np.pad(mask, ((0, shape[0] * factor_y - mask.shape[0]), (0, shape[1] * factor_x - mask.shape[1])))
    return padded.reshape(shape[0], factor_y, shape[1], factor_x).any(axis=(1, 3))
