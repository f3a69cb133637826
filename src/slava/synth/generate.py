"""One synthetic micrograph with its ground truth."""

from __future__ import annotations

import numpy as np

from slava.synth import databar, sem
from slava.synth.params import CLASSES, SynthError, check_class, check_shift, sample_pixel_size
from slava.synth.shapes import generators

MIN_SIZE = 64


def generate(cls: str, seed: int, size: int = 256, shift: str | None = None, return_masks: bool = False):
    """A synthetic SEM micrograph of class ``cls``: ``(image uint8 [size, size] incl. data bar, truth)``.

    The image region is the rows above ``truth["data_bar"]``; every quantity in
    ``truth["quantities"]`` was measured on the geometry rasterised there. With
    ``return_masks`` a third item holds the noise-free scene of the image
    region: ``labels`` (instance map or None), ``mask`` (foreground) and
    ``height`` (px units).
    """
    check_class(cls)
    check_shift(shift)
    if int(size) < MIN_SIZE:
        raise SynthError(f"size must be at least {MIN_SIZE} px, got {size}")
    size = int(size)
    rng = np.random.default_rng([int(seed), CLASSES.index(cls)])
    bar_h = databar.bar_height(rng, size)
    img_h = size - bar_h
    scale_nm, scale_px = databar.choose_scale_bar(rng, sample_pixel_size(rng, cls, shift), size)
    # The pixel size is snapped to the scale bar so that bar and calibration agree exactly.
    px = scale_nm / scale_px
    scene = generators()[cls](rng, img_h, size, px)
    params = sem.sample_params(rng, shift)
    image = np.zeros((size, size), np.uint8)
    image[:img_h] = sem.form_image(scene, params, rng)
    field_nm = size * px
    mag = databar.magnification(field_nm)
    bar_box, sb_box = databar.render(image, img_h, rng, scale_nm, scale_px, field_nm, mag)
    truth = {
        "class": cls,
        "seed": int(seed),
        "size": [size, size],
        "pixel_size_nm": round(px, 6),
        "data_bar": bar_box,
        "scale_bar_px": int(scale_px),
        "scale_bar_nm": float(scale_nm),
        "scale_bar_box": sb_box,
        "magnification": round(mag, 2),
        "field_width_nm": round(field_nm, 3),
        "shift": shift,
        "kind": scene.kind,
        "quantities": scene.quantities,
        "imaging": params,
    }
    if return_masks:
        return image, truth, {"labels": scene.labels, "mask": scene.mask, "height": scene.height}
    return image, truth
