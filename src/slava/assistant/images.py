"""Every image the assistant accepts, turned into a ``Micrograph`` through ``slava.io``.

Paths, raw bytes, numpy arrays and PIL images all take the same road as files
do in training (grey float pixels, data bar cropped), so one picture answers
the same way however it is handed in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from slava.io import Micrograph, MicrographError, load_micrograph, load_micrograph_bytes, micrograph_from_array

ImageInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray, Any, Micrograph]
"""A path, raw file bytes, a numpy array [H,W] or [H,W,C], a PIL image, or a ``Micrograph``."""


def to_micrograph(image: ImageInput, pixel_size_nm: float | None = None) -> Micrograph:
    """Load or wrap ``image`` as a ``Micrograph``; ``pixel_size_nm`` overrides the calibration found."""
    if isinstance(image, Micrograph):
        if pixel_size_nm is not None:
            from dataclasses import replace

            return replace(image, pixel_size_nm=float(pixel_size_nm), pixel_size_source="caller")
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_micrograph(Path(image), pixel_size_nm=pixel_size_nm)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return load_micrograph_bytes(bytes(image), pixel_size_nm=pixel_size_nm)
    if isinstance(image, np.ndarray) or (hasattr(image, "mode") and hasattr(image, "getdata")):
        return micrograph_from_array(image, pixel_size_nm=pixel_size_nm)
    raise MicrographError(type(image).__name__, "not an image: expected a path, bytes, numpy array, PIL image or Micrograph")


def model_pixels(micrographs: list[Micrograph], size: int):
    """Model input [B,1,size,size] in [0,1], resized exactly as in training."""
    import torch

    from slava.model.pixels import to_model_pixels

    return torch.stack([to_model_pixels(m.pixels, size) for m in micrographs])
