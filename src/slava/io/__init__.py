"""Reading micrographs: formats, TIFF metadata, data-bar cropping, scale bars."""

from slava.io.instrument import Instrument
from slava.io.micrograph import Micrograph, MicrographError
from slava.io.readbar import read_instrument
from slava.io.readers import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    load_micrograph,
    load_micrograph_bytes,
    micrograph_from_array,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Instrument",
    "Micrograph",
    "MicrographError",
    "load_micrograph",
    "load_micrograph_bytes",
    "micrograph_from_array",
    "read_instrument",
]
