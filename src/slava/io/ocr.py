"""Reading the words of a data bar with Tesseract OCR (Debian's ``tesseract-ocr`` through ``pytesseract``).

The band is turned to dark text on white (what Tesseract reads best) and
enlarged until its text is about 30 px high before it is read. When
Tesseract is missing, the first call warns once and every call returns no
words with the reason, so callers carry on without the text.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from slava.io.databar import dominant_value

# Tesseract reads bar text best enlarged twice (capitals ~25 px high on
# FEI/Zeiss bars of 60-80 px); three times breaks its sparse-text layout on
# FEI tables. Thin bands (synthetic, screen captures) get three.
UPSCALE = 2
THIN_BAND = 40
MIN_CONFIDENCE = 0

MISSING = "Tesseract OCR is not installed (apt-get install tesseract-ocr, or `make ocr`): the data-bar text was not read"

_warned = False

# Regions read lately, by their pixels and reading settings. A server is sent the same image
# with every turn of a chat and every question about it, and OCR (~0.5 s a bar) was most of
# its work under load. Only successful reads are kept: a missing Tesseract may be installed later.
READ_CACHE = 512
_read: OrderedDict[bytes, list] = OrderedDict()
_read_lock = threading.Lock()


@dataclass(frozen=True)
class Word:
    """One word Tesseract read: its text, box (x0, y0, x1, y1) in image pixels, and line id."""

    text: str
    box: tuple[int, int, int, int]
    line: tuple[int, int, int]

    @property
    def cx(self) -> float:
        return 0.5 * (self.box[0] + self.box[2])

    @property
    def cy(self) -> float:
        return 0.5 * (self.box[1] + self.box[3])


def tesseract_problem() -> str | None:
    """Why OCR cannot run here (pytesseract or the tesseract program missing), or None when it can."""
    try:
        import pytesseract
    except ImportError:
        return MISSING
    try:
        pytesseract.get_tesseract_version()
    except (pytesseract.TesseractNotFoundError, OSError):
        return MISSING
    return None


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def read_words(
    region: np.ndarray, offset: tuple[int, int] = (0, 0), psm: int = 11, scale: int | None = None
) -> tuple[list[Word], str | None]:
    """The words in ``region`` ([H, W] in [0, 1]) and any problem; boxes are shifted by ``offset`` (x, y).

    ``psm`` 11 is Tesseract's sparse-text mode: bar text is scattered
    fields, not paragraphs. ``scale`` overrides the enlargement. A region read lately with the
    same settings is not read again (``READ_CACHE``).
    """
    problem = tesseract_problem()
    if problem is not None:
        _warn_once(problem)
        return [], problem
    region = np.ascontiguousarray(region, dtype=np.float32)
    key = hashlib.sha256(repr((region.shape, offset, psm, scale)).encode() + region.tobytes()).digest()
    with _read_lock:
        if key in _read:
            _read.move_to_end(key)
            return list(_read[key]), None
    words, problem = _read_words(region, offset, psm, scale)
    if problem is None:
        with _read_lock:
            _read[key] = list(words)
            while len(_read) > READ_CACHE:
                _read.popitem(last=False)
    return words, problem


def _read_words(region: np.ndarray, offset: tuple[int, int], psm: int, scale: int | None) -> tuple[list[Word], str | None]:
    import pytesseract
    from PIL import Image

    grey = np.asarray(region, dtype=np.float32)
    if grey.size == 0:
        return [], "empty data bar"
    if dominant_value(grey) < 0.5:
        grey = 1.0 - grey
    if scale is None:
        scale = UPSCALE + (1 if grey.shape[0] < THIN_BAND else 0)
    image = Image.fromarray((grey * 255).astype(np.uint8))
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    try:
        data = pytesseract.image_to_data(
            image, config=f"--psm {psm}", output_type=pytesseract.Output.DICT, timeout=30
        )
    except (RuntimeError, pytesseract.TesseractError, OSError) as exc:
        return [], f"Tesseract failed on the data bar ({exc})"
    words = []
    for i, text in enumerate(data["text"]):
        text = text.strip()
        if not text or float(data["conf"][i]) < MIN_CONFIDENCE:
            continue
        x, y = data["left"][i] / scale + offset[0], data["top"][i] / scale + offset[1]
        w, h = data["width"][i] / scale, data["height"][i] / scale
        line = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
        words.append(Word(text, (round(x), round(y), round(x + w), round(y + h)), line))
    return words, None
