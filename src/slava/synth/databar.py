"""The instrument data bar: a flat band under the image with magnification, field width and a scale bar."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from slava.synth.params import REFERENCE_WIDTH_MM

_NICE = (1.0, 2.0, 5.0)


def bar_height(rng: np.random.Generator, height: int) -> int:
    """Height of the data bar in px: 8–12 % of the image height, never too thin for text."""
    return max(12, int(round(height * rng.uniform(0.08, 0.12))))


def choose_scale_bar(rng: np.random.Generator, pixel_size_nm: float, width: int) -> tuple[float, int]:
    """A round scale-bar length (1, 2 or 5 × 10^k nm) spanning 10–30 % of the width: (nm, px)."""
    options = []
    for k in range(-1, 7):
        for m in _NICE:
            nm = m * 10.0**k
            px = int(round(nm / pixel_size_nm))
            if 0.1 * width <= px <= 0.3 * width:
                options.append((nm, px))
    if not options:
        nm = min((m * 10.0**k for k in range(-1, 7) for m in _NICE), key=lambda v: abs(v / pixel_size_nm - 0.2 * width))
        return nm, max(1, int(round(nm / pixel_size_nm)))
    return options[int(rng.integers(len(options)))]


def format_length(nm: float) -> str:
    """A length as printed by microscopes: '200 nm', '2 um', '1.5 mm'.

    'um' rather than 'µm' because PIL's built-in font has no µ glyph; older
    instruments print 'um' too.
    """
    if nm >= 1e6:
        return f"{nm / 1e6:g} mm"
    if nm >= 1e3:
        return f"{nm / 1e3:.3g} um"
    return f"{nm:.3g} nm"


def magnification(field_width_nm: float) -> float:
    """Magnification against the Polaroid reference width for a given field width."""
    return REFERENCE_WIDTH_MM * 1e6 / field_width_nm


def _mag_text(mag: float, style: str) -> str:
    if style == "zeiss":
        return f"Mag = {mag / 1e3:.2f} K X" if mag >= 1e3 else f"Mag = {mag:.0f} X"
    return f"mag {mag:,.0f} x".replace(",", " ")


def _style(rng: np.random.Generator) -> dict:
    """How this instrument draws its bar: polarity, grey levels, separator line, font, layout.

    Real bars come in both polarities (FEI/Thermo: light text on black; Zeiss:
    black text on white, framed by a thin line), so a detector trained or tuned
    on one alone would miss the other.
    """
    light = rng.random() < 0.4
    if light:
        fill, ink = int(rng.integers(200, 256)), int(rng.integers(0, 40))
    else:
        fill, ink = int(rng.integers(0, 50)), int(rng.integers(215, 256))
    return {
        "fill": fill,
        "ink": ink,
        "separator": int(rng.integers(1, 3)) if rng.random() < 0.4 else 0,
        "font_fraction": rng.uniform(0.28, 0.4),
        "bar_right": bool(rng.random() < 0.4),
        "text_rows": int(rng.integers(1, 3)),
        "vendor": "zeiss" if (rng.random() < 0.8) == light else "fei",
    }


def render(
    img: np.ndarray,
    y0: int,
    rng: np.random.Generator,
    scale_nm: float,
    scale_px: int,
    field_width_nm: float,
    mag: float,
) -> tuple[list[int], list[int]]:
    """Draw the data bar into rows ``y0:`` of ``img`` (uint8, in place), in a style drawn from ``rng``.

    Returns (data_bar box, scale_bar box) as [x0, y0, x1, y1], x1/y1 exclusive.
    The data-bar box includes any separator line at its top. The scale-bar box
    holds only the bar's own pixels (in the ink colour); its label sits above.
    """
    h, w = img.shape
    st = _style(rng)
    sep = st["separator"]
    bh = h - y0 - sep
    band = Image.new("L", (w, bh), st["fill"])
    draw = ImageDraw.Draw(band)
    ink = st["ink"]
    font_px = max(7, int(bh * st["font_fraction"]))
    font = ImageFont.load_default(size=font_px)
    thick = max(2, bh // 7)
    margin = max(3, w // 40)
    label = format_length(scale_nm)
    label_w = int(np.ceil(draw.textlength(label, font=font)))
    block_w = max(scale_px, label_w)
    block_x0 = w - margin - block_w if st["bar_right"] else margin
    bar_x0 = block_x0 + max(0, (label_w - scale_px) // 2)
    bar_y0 = min(int(bh * 0.15) + font_px + 2, bh - thick - 1)
    draw.text((bar_x0 + scale_px / 2, bar_y0 - 2), label, fill=ink, font=font, anchor="md")
    draw.rectangle([bar_x0, bar_y0, bar_x0 + scale_px - 1, bar_y0 + thick - 1], fill=ink)
    fw = format_length(field_width_nm)
    wd = f"{rng.uniform(2.0, 15.0):.1f} mm"
    kv = float(rng.choice([1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0]))
    if st["vendor"] == "zeiss":
        items = [_mag_text(mag, "zeiss"), f"Width = {fw}", f"WD = {wd}", f"EHT = {kv:.2f} kV"]
    else:
        items = [f"HFW {fw}", _mag_text(mag, "fei"), f"WD {wd}", f"HV {kv:.2f} kV"]
    # Text fills the side of the band away from the scale bar; items that do not fit are left out.
    if st["bar_right"]:
        x_lo, x_hi = margin, block_x0 - 2 * margin
    else:
        x_lo, x_hi = block_x0 + block_w + 2 * margin, w - margin
    rows = [int(bh * 0.12), int(bh * 0.55)] if st["text_rows"] == 2 else [int(bh * 0.3)]
    x = [x_lo] * len(rows)
    for i, text in enumerate(items):
        r = i % len(rows)
        tw = draw.textlength(text, font=font)
        if x[r] + tw <= x_hi:
            draw.text((x[r], rows[r]), text, fill=ink, font=font)
            x[r] += int(tw) + 2 * margin
    img[y0 : y0 + sep] = ink
    img[y0 + sep :] = np.asarray(band)
    top = y0 + sep + bar_y0
    return [0, y0, w, h], [bar_x0, top, bar_x0 + scale_px, top + thick]
