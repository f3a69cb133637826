"""Grounded answers: counting and size questions answered by the measurement toolkit.

A small student guesses numbers; classical image analysis measures them. A
question is grounded when ``slava.teacher.prompts.measure_kind`` knows its
exact wording, or when its words ask for a count or a size of something the
toolkit measures (particles, fibres, pores, a pattern's pitch, the field).
The answer states the measured numbers in nm, or in px without calibration.
Generated answers get four text fixes here too: no word or phrase said twice
in a row, no length in nm on an uncalibrated image, no sentence that puts a
context number on the wrong quantity, and no sentence the decoder left
unfinished.
"""

from __future__ import annotations

import re
from typing import Callable

from slava.data.chat import CONTEXT_PREFIX
from slava.data.numbers import misplaced_numbers, without_ratio_values
from slava.data.repetition import loop_start
from slava.measure.record import Measurements
from slava.teacher.prompts import measure_kind

GROUNDED_KINDS = (
    "particle_count", "mean_diameter", "coverage", "fibre_count", "mean_width", "orientation",
    "pore_fraction", "mean_pore_size", "ligament_width", "pitch", "pixel_size", "field_width", "instrument",
)
"""The ``measure_kind``s the toolkit answers; other kinds (apex radius, gap…) stay with the model."""

_FIBRE = r"fib(?:re|er)s?|wires?|nanowires?|tubes?|strands?|rods?"
_PORE = r"pores?|holes?|voids?|openings?"
_PARTICLE = r"particles?|grains?|dots?|spheres?|blobs?|objects?|features?|islands?|cells?"
_RULES: tuple[tuple[str, str], ...] = (
    (r"pixel size", "pixel_size"),
    (r"field of view|field width|(?:image|field) (?:is )?wide|\b(?:image|field|picture) spans?\b|how (?:wide|large|big) "
     r"is the (?:image|field|picture)|\bspan of the (?:image|field)", "field_width"),
    (r"porosity|pore (?:area )?fraction|fraction .*pores?", "pore_fraction"),
    (r"ligament|strut", "ligament_width"),
    (r"coverage|fraction .*cover|area .*covered", "coverage"),
    (r"pitch|period", "pitch"),
    (r"orientation|oriented|aligned|direction", "orientation"),
    (rf"how many (?:\w+ )*?(?:{_FIBRE})\b|count (?:\w+ )*?(?:{_FIBRE})\b|number of (?:{_FIBRE})\b", "fibre_count"),
    (rf"how many (?:\w+ )*?(?:{_PORE})\b|count (?:\w+ )*?(?:{_PORE})\b|number of (?:{_PORE})\b", "pore_count"),
    (r"how many|\bcount\b|number of", "particle_count"),
    (rf"(?:{_PORE}).*(?:size|diameter|large|big|wide)|(?:size|diameter) of (?:the )?(?:{_PORE})", "mean_pore_size"),
    (rf"(?:{_FIBRE}).*(?:width|wide|thick|diameter)|(?:width|thickness|diameter) of (?:the )?(?:{_FIBRE})", "mean_width"),
    (rf"(?:{_PARTICLE}).*(?:diameter|size|large|big)|(?:diameter|size) of (?:the )?(?:{_PARTICLE})|mean diameter", "mean_diameter"),
)
_COMPILED = tuple((re.compile(p, re.I), kind) for p, kind in _RULES)


_INSTRUMENT = re.compile(r"magnification|accelerating voltage|beam energy|\bkV\b|\bEHT\b|working distance|detector|"
                         r"which signal|when was (?:it|this|the image) (?:taken|acquired|recorded)", re.I)


_PHYSICAL_LENGTH = re.compile(
    r"\d[\d.,]*\s*(?:nm|µm|μm|um|mm|nanomet(?:re|er)s?|micromet(?:re|er)s?|microns?)\b", re.I)
UNCALIBRATED_NOTE = "The image carries no calibration, so no size in nm can be given."


def _sentences(text: str) -> list[str]:
    """``text``'s sentences, split after each ``.``, ``!`` or ``?`` that whitespace follows."""
    return re.split(r"(?<=[.!?])\s+", text.strip())


def context_statement(context_text: str) -> str:
    """The image context line as a sentence: what an answer says when the guards left none of its own."""
    return f"Measured on this image: {context_text.removeprefix(CONTEXT_PREFIX).strip()}."


def without_unknown_lengths(text: str, context_text: str | None = None) -> tuple[str, bool]:
    """``text`` without the sentences that state a physical length, for an image with no calibration.

    The student learned to phrase fields of view and sizes in nm; on an
    uncalibrated image any such number is invented. Returns (text, whether any
    sentence was removed); a removal ends the text with ``UNCALIBRATED_NOTE``.
    An answer that loses every sentence states the measurements of
    ``context_text`` before the note, where it is given: the note alone
    answered nothing (2 of 10 real captions, AMD EPYC run of 2026-12-03).
    """
    sentences = _sentences(text)
    kept = [s for s in sentences if not _PHYSICAL_LENGTH.search(s)]
    if len(kept) == len(sentences):
        return text, False
    if not kept and context_text:
        kept = [context_statement(context_text)]
    return " ".join([*kept, UNCALIBRATED_NOTE]).strip(), True


def without_misplaced_numbers(text: str, context_text: str | None,
                              question: str | None = None) -> tuple[str, list[str]]:
    """``text`` without the sentences that state a context number as another quantity, and those numbers.

    The student copies the context's numbers but, small as it is, sometimes
    onto the wrong slot of a sentence it learned ("at a pixel size of 31.1 %",
    where 31.1 % is the coverage; ``misplaced_numbers``). An aspect ratio
    loses only its value (``without_ratio_values``); the rest of the answer
    stands. An answer every sentence of which misplaces a number becomes the
    measurements themselves, as the context line states them.
    """
    misplaced = misplaced_numbers(text, context_text, question)
    if not misplaced:
        return text, []
    text = without_ratio_values(text, context_text, question)
    sentences = _sentences(text)
    kept = [s for s in sentences if not misplaced_numbers(s, context_text, question)]
    if not kept:
        return context_statement(context_text), misplaced
    return " ".join(kept), misplaced


_STUTTER = re.compile(r"\b([A-Za-z][\w-]*(?:\s+[A-Za-z][\w-]*){0,3})((?:\s*,\s*|\s+)(?:and\s+)?\1\b)+", re.I)


def without_stutters(text: str) -> str:
    """``text`` with a word or phrase of up to four words said again straight after itself said once.

    The decoder's loop guard stops a phrase on its third time; a small LM
    still doubles adjectives and nouns ("a long, straight, straight fibre",
    "pores and pores", "a high aspect ratio and a high aspect ratio"), which
    reads as broken. Repeats across a sentence end are left alone. Saying a
    word once can make a phrase recur a third time, a loop the decoder would
    have stopped at (``slava.data.repetition``): the text then ends there.
    """
    said = _STUTTER.sub(r"\1", text)
    cut = loop_start(said)
    return said if cut is None else said[:cut].rstrip()


_CLOSERS = ")\"'”’"
_SENTENCE_END = re.compile(rf"[.!?][{re.escape(_CLOSERS)}]*(?=\s)")


def whole_sentences(text: str) -> str:
    """``text`` without a last sentence it never finished, when an earlier sentence is whole.

    The teacher's answers are whole sentences, so the student's stop short
    of a full stop only where the decoder cut them (a loop about to start,
    the token budget spent), and a caption that breaks off mid-phrase ("a
    sphere, with a bright central") reads as broken. An answer with no
    finished sentence at all is kept: a fragment is still the answer.
    """
    stripped = text.rstrip()
    if stripped.rstrip(_CLOSERS).endswith((".", "!", "?")):
        return stripped
    ends = list(_SENTENCE_END.finditer(stripped))
    return stripped[: ends[-1].end()] if ends else stripped


def grounded_kind(question: str) -> str | None:
    """The measurement that answers ``question``, or None when the model should answer it."""
    if _INSTRUMENT.search(question):
        return "instrument"
    kind = measure_kind(question)
    if kind is not None:
        return kind if kind in GROUNDED_KINDS else None
    for pattern, found in _COMPILED:
        if pattern.search(question):
            return found
    return None


def _num(value: float, digits: int = 3) -> float:
    """Round to ``digits`` significant figures, as a person would quote a measurement."""
    if value == 0:
        return 0.0
    from math import floor, log10

    return round(value, max(0, digits - 1 - int(floor(log10(abs(value))))))


def _fmt(value: float) -> str:
    v = _num(value)
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _particles(m: Measurements, kind: str) -> tuple[str, dict] | None:
    p = m.particles
    if p is None:
        return None
    u = m.unit
    if kind == "particle_count":
        edge = f" ({p.border_count} more cut by the image edge and not counted)" if p.border_count else ""
        return f"I count {_n(p.count, 'particle')}{edge}.", {"particle_count": p.count}
    if kind == "coverage":
        return (f"The particles cover {_fmt(100 * p.coverage)} % of the image area.",
                {"coverage": _num(p.coverage)})
    if p.mean_diameter is None:
        return "No separate particles were found, so no particle diameter can be given.", {"particle_count": p.count}
    spread = f", standard deviation {_fmt(p.std_diameter)} {u}" if p.std_diameter is not None else ""
    return (f"The mean particle diameter is {_fmt(p.mean_diameter)} {u} (median {_fmt(p.median_diameter)} {u}"
            f"{spread}, over {p.count} particles).",
            {f"mean_diameter_{u}": _num(p.mean_diameter), "particle_count": p.count})


def _fibres(m: Measurements, kind: str) -> tuple[str, dict] | None:
    f = m.fibres
    if f is None:
        return None
    if kind == "fibre_count":
        return f"I count {_n(f.count, 'fibre')}.", {"fibre_count": f.count}
    if kind == "orientation":
        if f.orientation_deg is None:
            return "The fibres show no dominant orientation.", {}
        return (f"The fibres run mostly at {_fmt(f.orientation_deg)}° from the horizontal"
                f" (spread {_fmt(f.orientation_spread_deg or 0)}°).", {"orientation_deg": _num(f.orientation_deg)})
    if f.mean_width is None:
        return "No fibres were found, so no width can be given.", {"fibre_count": f.count}
    return (f"The mean fibre width is {_fmt(f.mean_width)} {m.unit} (over {f.count} fibres).",
            {f"mean_width_{m.unit}": _num(f.mean_width), "fibre_count": f.count})


def _pores(m: Measurements, kind: str) -> tuple[str, dict] | None:
    p = m.pores
    if p is None:
        return None
    u = m.unit
    if kind == "pore_fraction":
        return f"Pores take up {_fmt(100 * p.pore_fraction)} % of the area.", {"pore_fraction": _num(p.pore_fraction)}
    if kind == "pore_count":
        return f"I count {_n(p.count, 'pore')}.", {"pore_count": p.count}
    if kind == "ligament_width":
        if p.mean_ligament_width is None:
            return "No ligaments between pores were found.", {}
        return (f"The mean ligament width is {_fmt(p.mean_ligament_width)} {u}.",
                {f"ligament_width_{u}": _num(p.mean_ligament_width)})
    if p.mean_pore_size is None:
        return "No pores were found, so no pore size can be given.", {"pore_count": p.count}
    return (f"The mean pore size is {_fmt(p.mean_pore_size)} {u} (over {p.count} pores, "
            f"pore fraction {_fmt(100 * p.pore_fraction)} %).",
            {f"mean_pore_size_{u}": _num(p.mean_pore_size), "pore_fraction": _num(p.pore_fraction)})


def _pitch(m: Measurements, kind: str) -> tuple[str, dict] | None:
    p = m.periodicity
    if p is None or p.pitch is None or p.strength < 0.2:
        return "The image shows no clear periodic pattern, so no pitch can be given.", {}
    return f"The pattern repeats with a pitch of {_fmt(p.pitch)} {m.unit}.", {f"pitch_{m.unit}": _num(p.pitch)}


def _calibration(m: Measurements, kind: str) -> tuple[str, dict] | None:
    if m.pixel_size_nm is None:
        return ("The image carries no calibration (no pixel size in its metadata and no readable scale bar), "
                f"so it is {m.width_px} px wide.", {"width_px": m.width_px})
    if kind == "pixel_size":
        return f"The pixel size is {_fmt(m.pixel_size_nm)} nm.", {"pixel_size_nm": _num(m.pixel_size_nm)}
    return (f"The field of view is {_fmt(m.field_width)} nm wide ({m.width_px} px at {_fmt(m.pixel_size_nm)} nm/px).",
            {"field_width_nm": _num(m.field_width)})


def _instrument(m: Measurements, kind: str) -> tuple[str, dict] | None:
    inst = m.instrument
    if not inst or inst.get("problem"):
        why = inst["problem"] if inst and inst.get("problem") else "the image has no readable data bar"
        return f"The instrument settings are not known: {why}.", {}
    said, numbers = [], {}
    for name, text in (("magnification", "a magnification of {:g}×"), ("hv_kv", "{:g} kV"),
                       ("wd_mm", "a working distance of {:g} mm"), ("detector", "the {} detector"),
                       ("date", "on {}")):
        if inst.get(name) is not None:
            said.append(text.format(inst[name]))
            numbers[name] = inst[name]
    if not said:
        return "The data bar gives no instrument settings that could be read.", {}
    return "The data bar says it was taken at " + ", ".join(said) + ".", numbers


_ANSWER: dict[str, Callable[[Measurements, str], tuple[str, dict] | None]] = {
    "particle_count": _particles, "mean_diameter": _particles, "coverage": _particles,
    "fibre_count": _fibres, "mean_width": _fibres, "orientation": _fibres,
    "pore_fraction": _pores, "pore_count": _pores, "mean_pore_size": _pores, "ligament_width": _pores,
    "pitch": _pitch, "pixel_size": _calibration, "field_width": _calibration, "instrument": _instrument,
}
KIND_NEEDS = {
    "particle_count": "particles", "mean_diameter": "particles", "coverage": "particles",
    "fibre_count": "fibres", "mean_width": "fibres", "orientation": "fibres",
    "pore_fraction": "pores", "pore_count": "pores", "mean_pore_size": "pores", "ligament_width": "pores",
    "pitch": "periodicity", "pixel_size": None, "field_width": None, "instrument": None,
}
"""The ``slava.measure`` kind each grounded question needs (None: calibration only)."""


def grounded_answer(kind: str, m: Measurements) -> tuple[str, dict]:
    """The sentence stating the measurement for ``kind`` and the numbers it states."""
    found = _ANSWER[kind](m, kind)
    if found is None:
        raise ValueError(f"the measurements hold nothing for {kind!r}")
    text, numbers = found
    if m.unit == "px" and KIND_NEEDS[kind] is not None and any(k.endswith("_px") for k in numbers):
        text += " The image carries no calibration, so sizes are in pixels."
    return text, numbers
