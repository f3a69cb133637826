"""The instrument record read from a data bar's text: what the microscope wrote beside the image.

``parse_bar_text`` turns OCR'd words into an ``Instrument`` in the layouts
instruments use: ``key = value`` fields (Zeiss ``Mag = 500.00 K X``,
TESCAN ``SEM HV: 20.0 kV``), a table of headers over values (FEI/Thermo
``HV | det | WD | mag`` over ``10.00 kV | ETD | 10.5 mm | 4 000 x``), and
bare values told apart by their units (JEOL ``15kV X5,000 1µm``, Hitachi
``5.0kV 8.0mm x50.0k SE(U)``). Each field keeps the text it came from.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from slava.io.ocr import Word
from slava.io.tiff_meta import unit_to_nm

_NUM = r"(\d+(?:[.,]\d+)?)"
_LENGTH = re.compile(r"(\d+(?:[.,]\d+)?)\s*(nm|µm|μm|um|mm|pm)\b", re.IGNORECASE)
# A scale-bar label as OCR reads it: Tesseract often takes the 0 of "20 nm" for
# U, O or D and the µ of "µm" for u, y, p or »; a time ("12:07:16 PM") is no label.
_LABEL_OCR = re.compile(r"(?<![:\d.,])(\d[\dOoUD]*(?:[.,][\dOoUD]+)?)\s*(nm|[µμuyp»]m|mm)(?![A-Za-z])")
# OCR reads the V of "kV" as "¥" now and then.
_KV = re.compile(_NUM + r"\s*k[V¥]", re.IGNORECASE)
_MM = re.compile(_NUM + r"\s*mm\b", re.IGNORECASE)
# "500.00 K X", "4 000 x", "x50.0k", "X5,000", "10.0 kx"
_MAG_AFTER = re.compile(r"(\d[\d\s.,]*?)\s*([kK])?\s*[xX×]\b")
_MAG_BEFORE = re.compile(r"[xX×]\s*(\d[\d.,]*)\s*([kK])?\b")
_DATE = re.compile(
    r"(\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\w*\s+\d{4}|\d{4}-\d{2}-\d{2})",
    re.IGNORECASE,
)
_KEYED = {
    "magnification": re.compile(r"\b(?:Mag|Magnification|SEM MAG)\b\s*[=:]?\s*(.+)", re.IGNORECASE),
    "hv_kv": re.compile(r"\b(?:EHT|HV|SEM HV|Acc\.?\s*V|AccV|Voltage)\b\s*[=:]?\s*(.+)", re.IGNORECASE),
    "wd_mm": re.compile(r"\bWD\b\s*[=:]?\s*(.+)", re.IGNORECASE),
    "detector": re.compile(r"\b(?:Signal A|Signal|Detector|Det)\b\s*[=:]\s*(\S+)", re.IGNORECASE),
    "hfw_um": re.compile(r"\b(?:Width|HFW|View field|FOV|Field of view)\b\s*[=:]?\s*(.+)", re.IGNORECASE),
    "pixel_size_nm": re.compile(r"\bPixel\s*Size\b\s*[=:]?\s*(.+)", re.IGNORECASE),
    "date": re.compile(r"\bDate\b\s*(?:\([^)]*\))?\s*[=:]?\s*(.+)", re.IGNORECASE),
}
# Table headers (FEI/Thermo, TESCAN) and the field of the value under each.
_HEADERS = {"hv": "hv_kv", "eht": "hv_kv", "wd": "wd_mm", "mag": "magnification", "det": "detector",
            "detector": "detector", "hfw": "hfw_um", "vfw": None, "spot": None, "pressure": None,
            "curr": None, "tilt": None, "dwell": None, "vac": None, "mode": None, "date": "date"}
_DETECTORS = ("InLens", "In-lens", "SE2", "SE(U)", "SE(L)", "SE(M)", "ETD", "TLD", "ICE", "CBS", "BSE", "BSD",
              "SEI", "LEI", "COMPO", "LVD", "vCD", "ABS", "STEM", "HAADF", "Everhart-Thornley", "ESB", "AsB")


@dataclass
class Instrument:
    """What the instrument wrote in its data bar (or file tags), each field with its source.

    Lengths are in nm unless the name says otherwise; ``magnification`` is
    the factor (234190 for "234.19 K X"). ``sources`` maps each filled field
    to where it came from (``ocr "Mag = 234.19 K X"``, ``fei tag``,
    ``scale bar "200 nm" = 128 px``). ``problem`` says why the bar text was
    not read, when it was not.
    """

    scale_bar_label: str | None = None
    scale_bar_nm: float | None = None
    scale_bar_px: float | None = None
    magnification: float | None = None
    hv_kv: float | None = None
    wd_mm: float | None = None
    detector: str | None = None
    hfw_um: float | None = None
    pixel_size_nm: float | None = None
    date: str | None = None
    text: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    FIELDS = ("scale_bar_label", "magnification", "hv_kv", "wd_mm", "detector", "hfw_um", "pixel_size_nm", "date")

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    def summary(self) -> str:
        """One line for prompts and reports: the fields that were read, e.g. ``Mag 234190x, HV 10 kV``."""
        parts = []
        if self.scale_bar_label:
            parts.append(f'scale bar "{self.scale_bar_label}"')
        if self.magnification:
            parts.append(f"Mag {self.magnification:g}x")
        if self.hv_kv is not None:
            parts.append(f"HV {self.hv_kv:g} kV")
        if self.wd_mm is not None:
            parts.append(f"WD {self.wd_mm:g} mm")
        if self.detector:
            parts.append(f"detector {self.detector}")
        if self.hfw_um is not None:
            parts.append(f"field width {self.hfw_um:g} µm")
        if self.pixel_size_nm is not None:
            parts.append(f"pixel size {self.pixel_size_nm:.4g} nm")
        if self.date:
            parts.append(f"date {self.date}")
        return ", ".join(parts)

    def set(self, name: str, value: object, source: str) -> None:
        """Fill field ``name`` with ``value`` from ``source`` unless it is already filled."""
        if value is None or getattr(self, name) not in (None, ""):
            return
        setattr(self, name, value)
        self.sources[name] = source


def _number(text: str) -> float | None:
    digits = text.replace(" ", "").replace(",", ".") if text.count(",") == 1 and "." not in text else text.replace(" ", "").replace(",", "")
    try:
        return float(digits)
    except ValueError:
        return None


def parse_magnification(text: str) -> float | None:
    """The factor in "500.00 K X", "4 000 x", "x50.0k", "X5,000" or "10.0 kx", or None."""
    # A comma before three digits groups thousands ("X5,000"), never a decimal in a magnification.
    text = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", text)
    for pattern in (_MAG_AFTER, _MAG_BEFORE):
        match = pattern.search(text)
        if match:
            value = _number(match.group(1).strip())
            if value is None or value <= 0:
                continue
            return value * (1000.0 if match.group(2) else 1.0)
    match = re.match(r"\s*(\d[\d\s.,]*)\s*([kK])?\s*$", text)
    if match:
        value = _number(match.group(1).strip())
        return None if not value else value * (1000.0 if match.group(2) else 1.0)
    return None


def _parse_value(name: str, text: str) -> object:
    if name == "magnification":
        return parse_magnification(text)
    if name == "hv_kv":
        match = _KV.search(text)
        return _number(match.group(1)) if match else None
    if name == "wd_mm":
        match = _MM.search(text)
        return _number(match.group(1)) if match else None
    if name in ("hfw_um", "pixel_size_nm"):
        match = _LENGTH.search(text)
        if not match:
            return None
        nm = unit_to_nm(_number(match.group(1)) or 0.0, match.group(2).replace("u", "µ").replace("U", "µ"))
        if not nm:
            return None
        return nm / 1000.0 if name == "hfw_um" else nm
    if name == "detector":
        token = text.strip().split()[0] if text.strip() else ""
        return token.strip("|:=") or None
    if name == "date":
        match = _DATE.search(text)
        return match.group(1) if match else None
    return None


def visual_lines(words: list[Word]) -> list[list[Word]]:
    """Words grouped into rows by their vertical centres, each row left to right, rows top to bottom."""
    rows: list[list[Word]] = []
    # Table rules ("|") read as tall words would chain the rows of a table together.
    for word in sorted((w for w in words if w.text.strip("|!l[]") or len(w.text) > 1), key=lambda w: w.cy):
        height = word.box[3] - word.box[1]
        if rows and abs(float(np.mean([w.cy for w in rows[-1]])) - word.cy) <= 0.5 * max(height, 1):
            rows[-1].append(word)
        else:
            rows.append([word])
    return [sorted(row, key=lambda w: w.box[0]) for row in rows]


def _cells(row: list[Word]) -> list[list[Word]]:
    """A row split where the gap between words is wider than twice the text height: separate fields."""
    cells: list[list[Word]] = []
    for word in row:
        height = max(word.box[3] - word.box[1], 1)
        if cells and word.box[0] - cells[-1][-1].box[2] <= 2.0 * height and word.text != "|":
            cells[-1].append(word)
        elif word.text != "|":
            cells.append([word])
    return cells


def _cell_text(cell: list[Word]) -> str:
    return " ".join(w.text for w in cell).strip("| ")


def _cell_box(cell: list[Word]) -> tuple[int, int, int, int]:
    return (min(w.box[0] for w in cell), min(w.box[1] for w in cell),
            max(w.box[2] for w in cell), max(w.box[3] for w in cell))


def parse_bar_text(words: list[Word], scale_bar_box: tuple[int, int, int, int] | None = None) -> Instrument:
    """An ``Instrument`` from the words of a data bar; the scale-bar label is the length nearest the bar."""
    inst = Instrument()
    rows = [_cells(row) for row in visual_lines(words)]
    inst.text = "\n".join(" | ".join(_cell_text(c) for c in row) for row in rows)
    claimed: set[int] = set()
    # Tables: a row of header cells over a row of values; each value word belongs to the
    # header whose column (halfway to the neighbouring headers) holds its centre.
    lines = visual_lines(words)
    for r, line in enumerate(lines[:-1]):
        # Each header word opens a column; other words (an icon read as "fl") join the one before.
        columns: list[list[Word]] = []
        for word in line:
            if word.text.lower().strip(":") in _HEADERS or not columns:
                columns.append([word])
            else:
                columns[-1].append(word)
        keys = [_HEADERS.get(c[0].text.lower().strip(":")) for c in columns]
        if sum(c[0].text.lower().strip(":") in _HEADERS for c in columns) < 2:
            continue
        centres = [c[0].cx for c in columns]
        bounds = [-np.inf] + [0.5 * (a + b) for a, b in zip(centres, centres[1:])] + [np.inf]
        for i, (column, name) in enumerate(zip(columns, keys)):
            below = [w for w in lines[r + 1] if bounds[i] <= w.cx < bounds[i + 1]]
            if not name or not below:
                continue
            text = " ".join(w.text for w in below).strip("| ")
            value = _parse_value(name, text)
            if value is not None:
                inst.set(name, value, f'ocr {column[0].text} "{text}"')
                claimed.update(id(c) for c in rows[r + 1] if any(w in c for w in below))
    # Keyed fields anywhere in a cell ("Mag = 500.00 K X").
    for row in rows:
        for cell in row:
            text = _cell_text(cell)
            for name, pattern in _KEYED.items():
                match = pattern.search(text)
                if match:
                    value = _parse_value(name, match.group(1))
                    if value is not None:
                        inst.set(name, value, f'ocr "{text}"')
                        claimed.add(id(cell))
    # Bare values told apart by their units (JEOL, Hitachi).
    for row in rows:
        for cell in row:
            if id(cell) in claimed:
                continue
            text = _cell_text(cell)
            for name, pattern in (("hv_kv", _KV), ("wd_mm", _MM)):
                if pattern.search(text):
                    inst.set(name, _parse_value(name, text), f'ocr "{text}"')
                    claimed.add(id(cell))
            if re.search(r"(^|\s)[xX×]\s*\d|\d\s*[kK]?\s*[xX×]$", text):
                inst.set("magnification", parse_magnification(text), f'ocr "{text}"')
            for token in text.split():
                if token.strip("|:") in _DETECTORS:
                    inst.set("detector", token.strip("|:"), f'ocr "{text}"')
            date = _DATE.search(text)
            if date:
                inst.set("date", date.group(1), f'ocr "{text}"')
    # The scale-bar label: an unclaimed length, nearest the scale bar when there is one.
    labels = []
    for row in rows:
        for cell in row:
            text = _cell_text(cell)
            match = _LABEL_OCR.search(text)
            if not match or id(cell) in claimed:
                continue
            # "6.2 mm" on its own is a working distance, unless it sits at the scale bar.
            if match.group(2) == "mm" and not (scale_bar_box and _near(_cell_box(cell), scale_bar_box)):
                continue
            labels.append((_distance(_cell_box(cell), scale_bar_box), match))
    if labels:
        _, match = min(labels, key=lambda item: item[0])
        number = re.sub(r"[OoUD]", "0", match.group(1))
        unit = {"nm": "nm", "mm": "mm"}.get(match.group(2), "µm")
        nm = unit_to_nm(_number(number) or 0.0, unit)
        if nm:
            inst.set("scale_bar_label", f"{number} {unit}", f'ocr "{match.group(0)}"')
            inst.scale_bar_nm = nm
    return inst


def _near(box: tuple[int, int, int, int], bar: tuple[int, int, int, int]) -> bool:
    """Whether a word box overlaps the scale bar's columns and sits within a few bar lengths of it."""
    return min(box[2], bar[2]) - max(box[0], bar[0]) > 0 and abs(0.5 * (box[1] + box[3]) - 0.5 * (bar[1] + bar[3])) < 40


def _distance(box: tuple[int, int, int, int], bar: tuple[int, int, int, int] | None) -> float:
    if bar is None:
        return 0.0
    dx = 0.5 * (box[0] + box[2]) - 0.5 * (bar[0] + bar[2])
    dy = 0.5 * (box[1] + box[3]) - 0.5 * (bar[1] + bar[3])
    return float(dx * dx + dy * dy) ** 0.5
