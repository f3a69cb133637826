"""The image context: what the toolkit and the data bar give for one image, as one short line of text.

Every prompt carries it (``slava.data.chat.user_turn``), so the student reads
the calibration, counts, sizes and instrument settings instead of guessing
them, and an answer can quote them verbatim: each value is rounded once, by
``slava.data.numbers.format_number``, the formatter the teachers' answers use.
For example::

    Measured: pixel 2.44 nm (file); field 624 nm wide; 37 particles, mean 41.3 nm, cover 23.1 %; Mag 50000x, 5 kV (bar)

Lengths are in nm where the image is calibrated, in px otherwise. A kind of
structure is listed only where its measurement is trustworthy (the toolkit's
notes flag the rest), so the line stays short: every token costs training time.

``micrograph_context`` is the one way teachers, evaluation and the assistant
get it, so an image gives byte-identical context at teach and at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slava.data.chat import CONTEXT_PREFIX
from slava.data.numbers import format_number
from slava.measure.record import Measurements

if TYPE_CHECKING:
    from slava.io.micrograph import Micrograph

MIN_PERIODIC_STRENGTH = 0.2
"""Autocorrelation at the pitch below which a field is not called periodic."""
MAX_PORE_FRACTION = 0.5
"""Above this dark-phase fraction the "pores" are the majority phase, not openings in a matrix."""

# Where a pixel size came from (``Micrograph.pixel_size_source``) -> the word the context says. A sidecar
# JSON travels with its file like a tag does (eval's shifted twins use one where pHYs is too coarse).
_SOURCE_WORDS = {
    "caller": "given", "zeiss-cz-sem": "file", "fei": "file", "tifffile": "file", "png-phys": "file",
    "sidecar": "file", "scale-bar": "scale bar",
}


@dataclass(frozen=True)
class Context:
    """The context line of one image and the numbers it states, by name, as stated (rounded)."""

    text: str
    numbers: dict[str, float | int] = field(default_factory=dict)
    unit: str = "px"
    """"nm" when the image is calibrated, else "px": the unit of every length in ``numbers``."""
    measurements: Measurements | None = field(default=None, compare=False, repr=False)
    """What the context was written from (None when built from a bare ``Measurements`` by a caller that keeps it)."""

    def say(self, name: str) -> str:
        """The text of number ``name`` exactly as the context line writes it."""
        return format_number(self.numbers[name])


def _num(numbers: dict, name: str, value: float | int) -> str:
    text = format_number(value)
    numbers[name] = int(text) if text.lstrip("-").isdigit() else float(text)
    return text


def _unreliable(m: Measurements, kind: str) -> bool:
    """Whether the toolkit's notes say the measurements of ``kind`` do not describe this image."""
    flags = {
        "particles": ("unreliable", "may be a film"),
        "fibres": ("more like particles",),
    }.get(kind, ())
    return any(n.startswith(f"{kind}:") and any(f in n for f in flags) for n in m.notes)


def image_context(measurements: Measurements, instrument: dict | None = None,
                  calibration_source: str | None = None) -> Context:
    """The context of an image from its measurements (and the instrument fields known for it).

    ``instrument`` is an ``Instrument.to_dict()`` (default: ``measurements.instrument``);
    ``calibration_source`` the micrograph's ``pixel_size_source``. Pure: the
    same inputs give the same text.
    """
    m = measurements
    numbers: dict[str, float | int] = {}
    u = m.unit
    parts: list[str] = []
    if m.pixel_size_nm is not None:
        where = _SOURCE_WORDS.get(calibration_source or "", calibration_source)
        parts.append(f"pixel {_num(numbers, 'pixel_size', m.pixel_size_nm)} nm" + (f" ({where})" if where else ""))
        # The width alone: digits cost a token each on SmolLM2, and the height adds little.
        parts.append(f"field {_num(numbers, 'field_width', m.width_px * m.pixel_size_nm)} nm wide")
    else:
        parts.append(f"uncalibrated; field {_num(numbers, 'field_width', m.width_px)} px wide")
    p = m.particles
    if p is not None and p.count > 0 and p.mean_diameter is not None and not _unreliable(m, "particles"):
        noun = "particle" if p.count == 1 else "particles"
        parts.append(f"{_num(numbers, 'particle_count', p.count)} {noun}, mean {_num(numbers, 'mean_diameter', p.mean_diameter)} "
                     f"{u}, cover {_num(numbers, 'coverage', 100 * p.coverage)} %")
    f = m.fibres
    if f is not None and f.count > 0 and f.mean_width is not None and not _unreliable(m, "fibres"):
        noun = "fibre" if f.count == 1 else "fibres"
        parts.append(f"{_num(numbers, 'fibre_count', f.count)} {noun}, width {_num(numbers, 'mean_width', f.mean_width)} {u}")
    o = m.pores
    if o is not None and o.count > 0 and 0 < o.pore_fraction <= MAX_PORE_FRACTION:
        text = f"pores {_num(numbers, 'pore_fraction', 100 * o.pore_fraction)} %"
        if o.mean_pore_size is not None:
            text += f", size {_num(numbers, 'mean_pore_size', o.mean_pore_size)} {u}"
        parts.append(text)
    per = m.periodicity
    if per is not None and per.pitch is not None and per.strength >= MIN_PERIODIC_STRENGTH:
        parts.append(f"pitch {_num(numbers, 'pitch', per.pitch)} {u}")
    inst = _instrument_text(instrument if instrument is not None else m.instrument, numbers)
    if inst:
        parts.append(inst)
    return Context(f"{CONTEXT_PREFIX} " + "; ".join(parts), numbers, u, m)


def _instrument_text(inst: dict | None, numbers: dict) -> str:
    """The data bar's settings: magnification, beam energy, working distance, detector."""
    if not inst or inst.get("problem"):
        return ""
    said = []
    if inst.get("magnification"):
        said.append(f"Mag {_num(numbers, 'magnification', float(inst['magnification']))}x")
    if inst.get("hv_kv") is not None:
        said.append(f"{_num(numbers, 'hv_kv', float(inst['hv_kv']))} kV")
    if inst.get("wd_mm") is not None:
        said.append(f"WD {_num(numbers, 'wd_mm', float(inst['wd_mm']))} mm")
    if inst.get("detector"):
        said.append(str(inst["detector"]).replace(";", ","))
    return ", ".join(said) + " (bar)" if said else ""


def needs_bar(micrograph: Micrograph) -> bool:
    """Whether only the data bar's label can calibrate ``micrograph``: the one case its OCR (0.5-2 s) runs unasked."""
    return micrograph.pixel_size_nm is None


def micrograph_context(micrograph: Micrograph) -> Context:
    """The context of a micrograph end to end: its bar read where ``needs_bar`` says, measured, written.

    The one way teachers, evaluation and the assistant get an image's
    context: an image calibrated by its file is never OCR'd here, so the
    same file gives the same text everywhere. ``Context.measurements`` holds
    every kind of ``slava.measure.measure``.
    """
    from slava.io import read_instrument
    from slava.measure import measure

    if needs_bar(micrograph):
        read_instrument(micrograph)
    measured = measure(micrograph)
    return image_context(measured, calibration_source=micrograph.pixel_size_source)
