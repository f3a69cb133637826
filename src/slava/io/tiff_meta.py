"""Pixel size (nm per pixel) from the metadata instruments write into TIFF files.

Each reader returns ``None`` when its tag is absent or unusable, so the caller
can try them in order. tifffile parses the Zeiss and FEI tags into dicts; the
raw text forms are handled too, because other writers store them unparsed.
"""

from __future__ import annotations

import re
from typing import Any

# Lengths in nm per unit, for units written by instruments and ImageJ.
_UNIT_NM = {
    "m": 1e9,
    "mm": 1e6,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "nm": 1.0,
    "pm": 1e-3,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
}

# A calibration coarser than this is a print/screen resolution (72 dpi is
# 352,778 nm per pixel), not a microscope's pixel size.
MAX_CALIBRATION_NM = 1e4

_ZEISS_KEYS = ("ap_image_pixel_size", "ap_pixel_size")
_ZEISS_TEXT = re.compile(r"^\s*(Image Pixel Size|Pixel Size)\s*=\s*([-+0-9.eE]+)\s*(\S+)", re.MULTILINE)
_FEI_SECTION = re.compile(r"^\s*\[(\w+)\]\s*$")
_FEI_PIXEL = re.compile(r"^\s*PixelWidth\s*=\s*([-+0-9.eE]+)\s*$")


def unit_to_nm(value: float, unit: str) -> float | None:
    """``value`` in ``unit`` as nm, or None for an unknown unit or a non-positive value."""
    factor = _UNIT_NM.get(unit.strip().lower())
    if factor is None or not value > 0:
        return None
    return float(value) * factor


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace")
    return value if isinstance(value, str) else None


def zeiss_pixel_size_nm(tag_value: Any) -> float | None:
    """Pixel size from a Zeiss ``CZ_SEM`` tag (34118), parsed dict or raw text."""
    if isinstance(tag_value, dict):
        for key in _ZEISS_KEYS:
            entry = tag_value.get(key)
            if isinstance(entry, tuple) and len(entry) >= 3 and isinstance(entry[1], (int, float)):
                nm = unit_to_nm(entry[1], str(entry[2]))
                if nm is not None:
                    return nm
        return None
    text = _text(tag_value)
    if text is None:
        return None
    found = {name: (value, unit) for name, value, unit in _ZEISS_TEXT.findall(text)}
    for name in ("Image Pixel Size", "Pixel Size"):
        if name in found:
            try:
                nm = unit_to_nm(float(found[name][0]), found[name][1])
            except ValueError:
                continue
            if nm is not None:
                return nm
    return None


def fei_pixel_size_nm(tag_value: Any) -> float | None:
    """Pixel size from FEI/Thermo metadata (tags 34680/34682): ``[Scan] PixelWidth`` in metres."""
    if isinstance(tag_value, dict):
        for section in ("Scan", "EScan"):
            width = (tag_value.get(section) or {}).get("PixelWidth")
            if isinstance(width, (int, float)) and width > 0:
                return float(width) * 1e9
        return None
    text = _text(tag_value)
    if text is None:
        return None
    section = None
    for line in text.splitlines():
        head = _FEI_SECTION.match(line)
        if head:
            section = head.group(1)
            continue
        match = _FEI_PIXEL.match(line)
        if match and section in ("Scan", "EScan"):
            try:
                width = float(match.group(1))
            except ValueError:
                continue
            if width > 0:
                return width * 1e9
    return None


def resolution_pixel_size_nm(page: Any, imagej_metadata: dict | None) -> float | None:
    """Pixel size from the X resolution tag, with its unit from ImageJ metadata or ResolutionUnit.

    Resolutions that work out coarser than 10 µm per pixel are print settings
    (72, 96, 300 dpi) and are ignored.
    """
    tag = page.tags.get(282)  # XResolution
    if tag is None or not isinstance(tag.value, tuple) or len(tag.value) != 2:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    per_unit = num / den
    nm = None
    unit = (imagej_metadata or {}).get("unit")
    if isinstance(unit, str) and unit_to_nm(1.0, unit) is not None:
        nm = unit_to_nm(1.0 / per_unit, unit)
    else:
        res_unit = page.tags.get(296)  # ResolutionUnit: 2 inch, 3 centimetre
        code = int(res_unit.value) if res_unit is not None else 2
        if code == 2:
            nm = 2.54e7 / per_unit
        elif code == 3:
            nm = 1e7 / per_unit
    if nm is None or not 0 < nm < MAX_CALIBRATION_NM:
        return None
    return nm


def tiff_pixel_sizes(tif: Any) -> dict[str, float]:
    """Every pixel size the first page of an open ``tifffile.TiffFile`` states, by source name."""
    page = tif.pages[0]
    found: dict[str, float] = {}
    readers = (
        ("zeiss-cz-sem", (34118,), zeiss_pixel_size_nm),
        ("fei", (34680, 34682), fei_pixel_size_nm),
    )
    for source, codes, reader in readers:
        for code in codes:
            tag = page.tags.get(code)
            nm = reader(tag.value) if tag is not None else None
            if nm is not None:
                found[source] = nm
                break
    try:
        imagej = tif.imagej_metadata
    except Exception:  # noqa: BLE001 - a malformed ImageJ description only loses this source
        imagej = None
    nm = resolution_pixel_size_nm(page, imagej)
    if nm is not None:
        found["tifffile"] = nm
    return found
