"""Reading a micrograph's data bar into its ``Instrument`` record and a pixel size from the scale bar.

The whole band is read once; when that misses the scale bar's label (small
text beside a short bar, as on Zeiss bars), a crop around the bar is read
again at a larger scale. The scale bar's length in pixels and its label give
a pixel size, the ``scale-bar`` candidate, which ranks after every file tag.
"""

from __future__ import annotations

import numpy as np

from slava.io.instrument import Instrument, parse_bar_text
from slava.io.micrograph import Micrograph
from slava.io.ocr import read_words



# Crops around the scale bar read for its label, tried in turn: (columns beside the
# bar, rows above, rows below, Tesseract page mode, enlargement). The first suits a
# label over a short bar (Zeiss), the second one inside the bar's line (FEI/Thermo).
LABEL_CROPS = ((20, 30, 5, 7, 4), (0, 30, 30, 6, 3))
# A label whose pixel size puts the field width this far from the bar's own
# field-width field has its unit misread (nm for µm): the other unit is tried.
UNIT_CHECK = 30.0


def _read_label(band: np.ndarray, bar_box: tuple[int, int, int, int], scale_box: tuple[int, int, int, int]) -> Instrument:
    x0, y0, x1, y1 = bar_box
    bx0, by0, bx1, by1 = scale_box
    for side, above, below, psm, scale in LABEL_CROPS:
        cx0, cy0 = max(x0, bx0 - side), max(y0, by0 - above)
        crop = band[cy0 - y0 : min(y1, by1 + below) - y0, cx0 - x0 : min(x1, bx1 + side) - x0]
        words, _ = read_words(crop, offset=(cx0, cy0), psm=psm, scale=scale)
        label = parse_bar_text(words, scale_box)
        if label.scale_bar_label:
            return label
    return Instrument()


def _check_unit(inst: Instrument, scale_px: float, width_px: int) -> None:
    """Switch a label between nm and µm when only the other unit agrees with the bar's field width."""
    if not (inst.hfw_um and inst.scale_bar_nm and inst.scale_bar_label):
        return
    field_nm = inst.hfw_um * 1000.0
    implied = inst.scale_bar_nm / scale_px * width_px
    number, unit = inst.scale_bar_label.split()
    for other, factor in (("µm", 1000.0), ("nm", 0.001)):
        if unit != other and max(implied / field_nm, field_nm / implied) > UNIT_CHECK:
            if max(implied * factor / field_nm, field_nm / (implied * factor)) < 3.0:
                inst.scale_bar_label, inst.scale_bar_nm = f"{number} {other}", inst.scale_bar_nm * factor
                inst.sources["scale_bar_label"] += " (unit checked against the field width)"
                return


def read_bar(band: np.ndarray, bar_box: tuple[int, int, int, int], scale_box: tuple[int, int, int, int] | None,
             scale_px: float | None, width_px: int | None = None) -> Instrument:
    """The ``Instrument`` in the data bar ``band`` (its pixels; ``bar_box`` in the image), with the
    pixel size its scale bar (``scale_box`` in the image, ``scale_px`` long) and label give.
    ``width_px`` is the scanned image's width, for checking the label against the field width."""
    x0, y0, x1, y1 = bar_box
    words, problem = read_words(band, offset=(x0, y0))
    inst = parse_bar_text(words, scale_box) if not problem else Instrument()
    inst.problem = problem
    if problem is None and scale_box is not None:
        # The label read from a crop around the bar is more reliable than the band's.
        label = _read_label(band, bar_box, scale_box)
        if label.scale_bar_label:
            inst.scale_bar_label, inst.scale_bar_nm = label.scale_bar_label, label.scale_bar_nm
            inst.sources["scale_bar_label"] = label.sources["scale_bar_label"] + " (scale-bar crop)"
    if scale_px:
        inst.scale_bar_px = float(scale_px)
        if width_px:
            _check_unit(inst, scale_px, width_px)
        if inst.scale_bar_nm:
            inst.set("pixel_size_nm", inst.scale_bar_nm / scale_px,
                     f'scale bar "{inst.scale_bar_label}" = {scale_px:.0f} px')
    if problem is None and not words:
        inst.problem = "OCR read no text in the data bar"
    return inst


def read_instrument(micrograph: Micrograph) -> Instrument | None:
    """The micrograph's ``Instrument`` (read once, then kept on it), or None when it has no data bar.

    Reading adds the ``scale-bar`` pixel-size candidate, and sets the pixel
    size from it when nothing better (caller, file tags, sidecar) gave one.
    """
    if micrograph.instrument is not None or micrograph.bar_pixels is None or micrograph.data_bar is None:
        return micrograph.instrument
    inst = read_bar(micrograph.bar_pixels, micrograph.data_bar, micrograph.scale_bar_box, micrograph.scale_bar_px,
                    micrograph.width)
    micrograph.instrument = inst
    candidates = micrograph.metadata.setdefault("pixel_size_candidates", {})
    if micrograph.scale_bar_nm is not None and micrograph.scale_bar_px:
        # The caller said what the bar stands for: that wins over the OCR'd label.
        return inst
    if inst.scale_bar_nm and micrograph.scale_bar_px:
        candidates["scale-bar"] = inst.scale_bar_nm / micrograph.scale_bar_px
        micrograph.scale_bar_nm = inst.scale_bar_nm
        micrograph.metadata["scale_bar_label"] = "tesseract"
        if micrograph.pixel_size_nm is None:
            micrograph.pixel_size_nm = candidates["scale-bar"]
            micrograph.pixel_size_source = "scale-bar"
    return inst

