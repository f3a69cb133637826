"""Drawing what was measured over the micrograph, so a person can check it at a glance.

The overlay is the whole image as the instrument wrote it (data bar
included) with the outline of every counted particle (green; edge-cut ones,
not counted, in orange), the data-bar box (blue), and the scale bar (red)
with its reading.
"""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage as ndi

from slava.io.micrograph import Micrograph
from slava.measure.particles import segment_particles
from slava.measure.prepare import border_labels, prepare

COUNTED = (40, 220, 60)
EDGE_CUT = (255, 150, 0)
BAR_BOX = (60, 140, 255)
SCALE_BAR = (255, 40, 40)


def _full_image(m: Micrograph) -> np.ndarray:
    """The micrograph as read, data bar put back in its place."""
    h, w = m.original_shape if m.original_shape != (0, 0) else m.pixels.shape
    full = np.zeros((h, w), np.float32)
    x, y = m.origin
    full[y : y + m.height, x : x + m.width] = m.pixels
    if m.data_bar is not None and m.bar_pixels is not None:
        x0, y0, x1, y1 = m.data_bar
        full[y0:y1, x0:x1] = m.bar_pixels
    return full


def particle_outlines(m: Micrograph, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(counted, edge-cut) outline masks of the particles found by ``method``, in micrograph pixels."""
    prep = prepare(m.pixels)
    labels, n, _ = segment_particles(prep, method)
    if prep.scale > 1:
        labels = np.kron(labels, np.ones((int(prep.scale), int(prep.scale)), labels.dtype))
    labels = np.pad(labels, ((0, max(0, m.height - labels.shape[0])), (0, max(0, m.width - labels.shape[1]))))
    labels = labels[: m.height, : m.width]
    edge = np.zeros(n + 1, dtype=bool)
    edge[border_labels(labels)] = True
    if m.masked is not None:
        # Particles touching the masked band are cut by it, as by the image edge.
        band = ~m.valid
        edge[np.unique(labels[ndi.binary_dilation(band)])] = True
        labels[band] = 0
    outline = (labels > 0) & (ndi.grey_erosion(labels, size=3) != labels)
    return outline & ~edge[labels], outline & edge[labels]


def render_overlay(m: Micrograph, particle_method: str = "auto") -> bytes:
    """The overlay as PNG bytes, the particles found by ``particle_method`` outlined."""
    from PIL import Image, ImageDraw

    grey = (_full_image(m) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    counted, cut = particle_outlines(m, particle_method)
    x, y = m.origin
    region = rgb[y : y + m.height, x : x + m.width]
    region[cut] = EDGE_CUT
    region[counted] = COUNTED
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    if m.data_bar is not None:
        x0, y0, x1, y1 = m.data_bar
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=BAR_BOX, width=2)
    if m.scale_bar_box is not None:
        x0, y0, x1, y1 = m.scale_bar_box
        draw.rectangle([x0, y0 - 2, x1 - 1, y1 + 1], outline=SCALE_BAR, width=2)
        reading = f"{m.scale_bar_px:.0f} px"
        if m.scale_bar_nm:
            reading += f" = {m.scale_bar_nm:g} nm"
        if m.pixel_size_nm:
            reading += f" ({m.pixel_size_nm:.4g} nm/px, {m.pixel_size_source})"
        draw.text((x0, max(0, y0 - 16)), reading, fill=SCALE_BAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
