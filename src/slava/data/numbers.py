"""Numbers as text: the one formatter every stated number goes through, and the invented-number check.

A number in an answer is grounded when the image context or the question
holds it; ``invented_numbers`` lists the ones that are in neither. Both sides
are normalised the same way (``1,234`` = ``1234``, ``12.0`` = ``12``), and
only numbers written in digits count: "three particles" states no number.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

SIGNIFICANT = 3
"""Significant figures of every non-integer number a teacher or the context states."""

# A number in digits, not glued to a word before it (SE2, H2O, Q4_1 and the like are names, not numbers),
# with optional thousands separators and decimals.
_NUMBER = re.compile(r"(?<![A-Za-z_\d.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def format_number(value: float | int) -> str:
    """``value`` as text: integers exactly, other numbers to three significant figures."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number to state")
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot state the non-finite number {value}")
    if value == 0:
        return "0"
    decimals = SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    # Rounding can carry into a new digit (9.996 -> 10.0): recount the decimals.
    if rounded != 0 and math.floor(math.log10(abs(rounded))) != math.floor(math.log10(abs(value))):
        decimals -= 1
        rounded = round(value, decimals)
    if decimals <= 0:
        return str(int(rounded))
    return f"{rounded:.{decimals}f}".rstrip("0").rstrip(".")


def _normal(text: str) -> str:
    """One spelling per value: no thousands separators, no trailing zeros, no sign on zero."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return text
    if value == 0:
        return "0"
    plain = format(value.normalize(), "f")
    return plain.rstrip("0").rstrip(".") if "." in plain else plain


def numbers_in(text: str) -> list[str]:
    """The numbers written in digits in ``text``, in order, each as it is written."""
    # A trailing sentence full stop is not a decimal point: the pattern needs a digit after it.
    return _NUMBER.findall(text or "")


def invented_numbers(answer: str, context_text: str | None, question: str | None = None) -> list[str]:
    """Numbers in ``answer`` (as written there) that neither the context nor the question holds.

    A number counts as held when it equals, after normalisation, a number of
    the context or the question, or its absolute value does (a "-" may be a dash).
    """
    known = {_normal(n) for n in numbers_in(context_text or "") + numbers_in(question or "")}
    known |= {k.lstrip("-") for k in known}
    return [n for n in numbers_in(answer) if _normal(n) not in known and _normal(n).lstrip("-") not in known]


# The unit a number is stated in, right after it. Only a glued "x" is a magnification: "1024 x 768" is a size.
_UNIT_AFTER = re.compile(r"\s?(nm|µm|um|mm|px|pixels?|%|percent|kV)(?![A-Za-z])|(x|X)(?![A-Za-z])")
_SAME_UNIT = {"um": "µm", "pixel": "px", "pixels": "px", "percent": "%", "X": "x"}
# The quantity a number is stated as, from the words just before it, in the answer's phrasing and in the
# context line's ("pixel 2.44 nm (file); field 624 nm wide"): the two a caption states most, and an aspect
# ratio, which the context never gives, so that any number stated as one is misplaced.
_ABOUT = r"(?:\s+(?:about|approximately|roughly|around))?"
_QUANTITY_BEFORE = (
    ("pixel size", re.compile(rf"pixel size(?:\s+(?:of|is|=|was))?{_ABOUT}\s*:?\s*$", re.I)),
    ("field width", re.compile(rf"(?:\bspans|\bfield of view(?:\s+(?:of|is))?){_ABOUT}\s*$", re.I)),
    ("aspect ratio", re.compile(rf"aspect ratio(?:\s+(?:of|is))?{_ABOUT}\s*$", re.I)),
)
_CONTEXT_QUANTITY = (("pixel size", re.compile(r"\bpixel\s*$")), ("field width", re.compile(r"\bfield\s*$")))
# A number stated as a count ("The image contains 123 fibres", "I count 89 particles") has no length unit: one
# with it is a size or a field width put in the count's place ("The image contains 1050 nm").
_LENGTH_UNITS = {"nm", "µm", "mm", "px"}
_ANSWER_QUANTITIES = (
    *_QUANTITY_BEFORE,
    ("count", re.compile(rf"(?:\bcontains|\bI count|\bcounts|\bseparates|\bfinds){_ABOUT}\s*$", re.I)),
)


def _stated(text: str, quantities) -> list[tuple[str, str, str | None, str | None]]:
    """(number as written, normalised, its unit, its quantity) for each number in ``text``."""
    out = []
    for m in _NUMBER.finditer(text or ""):
        unit = _UNIT_AFTER.match(text, m.end())
        unit = None if unit is None else (unit.group(1) or unit.group(2))
        before = text[max(0, m.start() - 40) : m.start()]
        quantity = next((name for name, pattern in quantities if pattern.search(before)), None)
        out.append((m.group(), _normal(m.group()).lstrip("-"), _SAME_UNIT.get(unit, unit), quantity))
    return out


def misplaced_numbers(answer: str, context_text: str | None, question: str | None = None) -> list[str]:
    """Numbers in ``answer`` that the context holds, but as another quantity: stated in another unit, as the
    pixel size or the field width when the context's is another number, as an aspect ratio, or as a count
    with a length unit after it.

    "The image spans 640 px at a pixel size of 31.1 %" against "field 640 px wide; … cover 31.1 %" misplaces
    31.1. Every number is checked against the context and the question together, so a number the question
    puts in a unit may be answered in it; numbers neither holds are ``invented_numbers``' business.
    """
    held = _stated(context_text or "", _CONTEXT_QUANTITY) + _stated(question or "", _QUANTITY_BEFORE)
    units: dict[str, set] = {}
    quantities: dict[str, set] = {}
    for _, value, unit, quantity in held:
        units.setdefault(value, set()).add(unit)
        if quantity is not None:
            quantities.setdefault(quantity, set()).add(value)
    wrong = []
    for written, value, unit, quantity in _stated(answer, _ANSWER_QUANTITIES):
        if value not in units:
            continue
        if quantity == "count":
            if unit in _LENGTH_UNITS:
                wrong.append(written)
        elif (unit is not None and unit not in units[value]) or (quantity is not None and value not in quantities.get(quantity, ())):
            wrong.append(written)
    return wrong


_RATIO_VALUE = re.compile(rf"(aspect ratio)(?:\s+(?:of|is))?{_ABOUT}\s*({_NUMBER.pattern})(?:{_UNIT_AFTER.pattern})?", re.I)


def without_ratio_values(text: str, context_text: str | None, question: str | None = None) -> str:
    """``text`` with the values of the aspect ratios it misplaces cut, the words kept: "a high aspect ratio of
    2190 nm" becomes "a high aspect ratio". The context states no aspect ratio, so such a value is always
    another quantity's number, while the words around it describe the shape."""
    return _RATIO_VALUE.sub(lambda m: m.group(1) if misplaced_numbers(m.group(0), context_text, question) else m.group(0),
                            text)
