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
