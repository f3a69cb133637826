"""The Micrograph record every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from slava.errors import SlavaError

if TYPE_CHECKING:
    from slava.io.instrument import Instrument


class MicrographError(SlavaError):
    """A file could not be read as a micrograph; the message names the file and the cause."""

    def __init__(self, path: object, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


@dataclass
class Micrograph:
    """A grey electron micrograph with its calibration.

    ``pixels`` is the image area only, float32 in [0, 1], shape [H, W]: a
    data bar along an edge is cropped off (``origin`` is where ``pixels``
    starts in the original), and a band with image on both sides is kept
    but blanked and listed in ``masked`` (a box in ``pixels``), which
    measurements leave out. Other box coordinates are (x0, y0, x1, y1) in
    pixels of the original, uncropped image, x1/y1 exclusive.
    ``bar_pixels`` keeps the data bar itself, so ``slava.io.read_instrument``
    can read its text later into ``instrument``.
    """

    pixels: np.ndarray
    path: str | None = None
    sha256: str | None = None
    dtype: str = "uint8"
    bit_depth: int = 8
    original_shape: tuple[int, int] = (0, 0)
    pixel_size_nm: float | None = None
    pixel_size_source: str | None = None
    data_bar: tuple[int, int, int, int] | None = None
    scale_bar_px: float | None = None
    scale_bar_box: tuple[int, int, int, int] | None = None
    scale_bar_nm: float | None = None
    metadata: dict = field(default_factory=dict)
    origin: tuple[int, int] = (0, 0)
    masked: tuple[int, int, int, int] | None = None
    bar_pixels: np.ndarray | None = field(default=None, repr=False)
    instrument: Instrument | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def valid(self) -> np.ndarray | None:
        """Boolean [H, W] mask of the pixels that are image (False on a masked band), or None when all are."""
        if self.masked is None:
            return None
        x0, y0, x1, y1 = self.masked
        mask = np.ones(self.pixels.shape, dtype=bool)
        mask[y0:y1, x0:x1] = False
        return mask

    def to_nm(self, pixels: float) -> float | None:
        """A length in pixels as nm, or None when the pixel size is unknown."""
        return None if self.pixel_size_nm is None else float(pixels) * self.pixel_size_nm
